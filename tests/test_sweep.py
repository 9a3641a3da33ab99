"""Sweeps (asymbp.sweep: plan and driver, `asymbp sweep`/`status`): plans, bad input,
kill -9 and resume, divergence, and the Ray backend agreeing with local processes."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from asymbp import paper, store
from asymbp.report import cell_values
from asymbp.cli import main
from asymbp.errors import AsymbpError
from asymbp.sweep import EXPERIMENTS, LR_MULTS, parse_seeds, plan, sweep


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """npz:PATH of 200 train / 100 test 8×8 one-channel images, 4 classes (model "mlp")."""
    rng = np.random.default_rng(0)
    n, m = 200, 100
    y = rng.integers(0, 4, n + m)
    x = rng.normal(size=(n + m, 64)).astype(np.float32)
    x[np.arange(n + m), y * 8] += 3.0
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=x[:n].reshape(n, 1, 8, 8), y_train=y[:n],
             x_test=x[n:].reshape(m, 1, 8, 8), y_test=y[n:])
    return f"npz:{path}"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A bigger vector dataset (2000 × 64) so a run lasts long enough to be killed."""
    rng = np.random.default_rng(1)
    n, m = 2000, 200
    y = rng.integers(0, 10, n + m)
    x = rng.normal(size=(n + m, 64)).astype(np.float32)
    x[np.arange(n + m), y * 6] += 2.0
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:])
    return f"npz:{path}"


# ---- experiments as data ---------------------------------------------------------------------


# the paper's experiments (BioTorch's have rows of their own: tests/test_biotorch_experiments.py)
@pytest.mark.parametrize("key", [k for k in EXPERIMENTS if not EXPERIMENTS[k].rows])
def test_experiments_have_exactly_the_papers_columns(key):
    runs = plan(key, datasets=["mnist5k"], base={"epochs": 2})
    assert list(dict.fromkeys(r.method for r in runs)) == paper.columns(key)
    assert len({r.key for r in runs}) == len(runs)  # no duplicate run
    extra = sum(len(p) for p in EXPERIMENTS[key].procedures.values())
    assert len(runs) == (len(paper.columns(key)) + extra) * len(LR_MULTS)


def test_experiment_a_usf_bm_cell_also_runs_the_batch_schedule():
    runs = [r for r in plan("A", datasets=["mnist5k"]) if r.method == "uSF+BM"]
    schedules = sorted({str(r.config.get("batch_schedule")) for r in runs})
    assert schedules == ["100:3,500", "None"] and len(runs) == 2 * len(LR_MULTS)
    others = [r for r in plan("C1", datasets=["mnist5k"]) if r.config.get("batch_schedule")]
    assert others == []


def test_a_grid_crosses_methods_datasets_multipliers_and_seeds():
    runs = plan(methods=["uSF+BN+BM", "RndF+BN"], datasets=["mnist5k", "mnist1d"],
                lr_mults=[1, 0.1], seeds=[1, 2, 3], base={"epochs": 3})
    assert len(runs) == 2 * 2 * 2 * 3
    assert {r.experiment for r in runs} == {"grid"}
    assert all(r.config["epochs"] == 3 for r in runs)
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]


def test_c2_columns_carry_their_freeze_setting():
    methods = {r.method for r in plan("C2", datasets=["mnist5k"])}
    assert "RndF+BN+BM@top" in methods and "SGD@bottom" in methods


@pytest.mark.parametrize("kw, match", [
    ({"experiment": "Z"}, "unknown experiment"),
    ({"experiment": "A", "methods": ["RndF+BN"]}, "method column of experiment A"),
    ({"methods": ["uSF+XX"], "datasets": ["mnist5k"]}, "uSF"),
    ({"methods": ["SGD"], "datasets": ["nope"]}, "unknown dataset"),
    ({"methods": ["SGD"]}, "--experiment"),
])
def test_plan_rejects_bad_names(kw, match):
    with pytest.raises(AsymbpError, match=match):
        plan(**kw)


# ---- the command line: bad input is one line, exit 2, nothing written ---------------------------


@pytest.mark.parametrize("args", [
    ["--experiment", "Z", "--datasets", "mnist5k"],
    ["--experiment", "A", "--methods", "uSF+BN+BM+XX", "--datasets", "mnist5k"],
    ["--methods", "uSF+YY", "--datasets", "mnist5k"],
    ["--methods", "SGD", "--datasets", "mnist77"],
    ["--methods", "SGD", "--datasets", "mnist5k", "--workers", "0"],
    ["--methods", "SGD", "--datasets", "mnist5k", "--lr-mults", "1,-3"],
    ["--methods", "SGD", "--datasets", "mnist5k", "--seeds", "a"],
])
def test_sweep_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args):
    db = tmp_path / "r.db"
    assert main(["sweep", *args, "--db", str(db), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asymbp: error: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_sweep_refuses_a_newer_schema_and_a_non_sqlite_file(tmp_path, capsys, tiny):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all")
    newer = tmp_path / "newer.db"
    store.Store(newer).close()
    con = sqlite3.connect(newer)
    con.execute("UPDATE meta SET value='7' WHERE key='schema_version'")
    con.commit()
    con.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for db, match in ((junk, "not an SQLite database"), (newer, "schema version 7")):
        assert main(["sweep", "--methods", "SGD", "--datasets", tiny, "--model", "mlp",
                     "--epochs", "1", "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
        assert main(["status", "--db", str(db)]) == 2
        assert match in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_status_of_a_missing_database_is_one_line(tmp_path, capsys):
    assert main(["status", "--db", str(tmp_path / "none.db")]) == 2
    assert "no results database" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---- real sweeps ---------------------------------------------------------------------------------


def test_diverged_and_failed_runs_are_recorded_and_the_cells_still_compute(tmp_path, tiny,
                                                                           capsys):
    db = tmp_path / "r.db"
    # lr multiplier 1e9: SGD's loss overflows to NaN/inf; 10 trains normally
    code = main(["sweep", "--methods", "SGD", "--datasets", tiny, "--model", "mlp",
                 "--lr-mults", "10,1e9", "--epochs", "2", "--workers", "2", "--db", str(db),
                 "--no-progress"])
    assert code == 0
    assert "DIVERGED" in capsys.readouterr().out
    df = store.load(db).set_index("lr_mult")
    assert df.loc[1e9, "status"] == "diverged" and df.loc[1e9, "diverged_epoch"] >= 1
    assert df.loc[10.0, "status"] == "done"
    cell = cell_values(store.load(db)).iloc[0]
    assert cell.status == "ok" and cell.n_diverged == 1
    assert cell.value == df.loc[10.0, "best_test_error"]
    assert main(["status", "--db", str(db), "--cells"]) == 0
    assert "1 diverged" in capsys.readouterr().out

    # a run that raises (a conv network on 8×8 inputs) is stored as failed, the sweep goes on
    good = plan(methods=["SGD"], datasets=[tiny], lr_mults=[10, 1e9],
                base={"model": "mlp", "epochs": 2})
    bad = plan(methods=["SGD"], datasets=[tiny], lr_mults=[1], base={"model": "mnist",
                                                                     "epochs": 1})
    counts = sweep(good + bad, db, workers=1, progress=False, log=False)
    assert counts["skipped"] == 2 and counts["failed"] == 1
    runs = store.load(db).set_index("model")
    assert runs.loc["mnist", "status"] == "failed" and runs.loc["mnist", "error"]
    assert sweep(good + bad, db, workers=1, progress=False, log=False)["skipped"] == 3
    again = sweep(good + bad, db, workers=1, retry_failed=True, progress=False, log=False)
    assert again["skipped"] == 2 and again["failed"] == 1


def test_kill_9_then_resume_runs_everything_exactly_once(tmp_path, small, capsys, wait_for):
    db = str(tmp_path / "r.db")
    epochs = 5
    def command(db):
        return [sys.executable, "-m", "asymbp", "sweep", "--methods", "SGD,uSF+BN+BM",
                "--datasets", small, "--model", "mlp", "--lr-mults", "10,1", "--epochs",
                str(epochs), "--workers", "2", "--db", db, "--no-progress"]

    cmd = command(db)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for(db, lambda df: (df.status == "done").sum() >= 1, timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, no clean-up
        proc.wait()
    before = store.load(db)
    finished = before[before.status.isin(["done", "diverged"])].set_index("run_key")
    assert 1 <= len(finished) < len(before) == 4
    time.sleep(1.5)  # orphaned workers notice their driver is gone
    assert main(["status", "--db", db]) == 0
    shown = capsys.readouterr().out
    assert "running (no sweep is running" in shown or "0 running" in shown

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    after = store.load(db).set_index("run_key")
    assert len(after) == 4 and after.index.is_unique
    assert (after.status == "done").all()
    cols = ["test_error", "best_test_error", "best_epoch", "seconds", "finished", "started"]
    assert after.loc[finished.index, cols].equals(finished[cols])
    ep = store.load_epochs(db)
    assert len(ep) == 4 * epochs and not ep.duplicated(["run_key", "epoch"]).any()
    assert not list((tmp_path / "r.db.runs").glob("*.pt"))  # finished runs' checkpoints go

    # resumed runs reach exactly what uninterrupted runs reach (deterministic resume); the
    # workers ran with one torch thread each, so the reference does too
    import torch

    from asymbp.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key, cfg in after.config.items():
            ref = train(cfg)
            assert ref["best_test_error"] == after.loc[key, "best_test_error"]
            assert ref["test_error"] == after.loc[key, "test_error"]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_backend_gives_the_same_rows_as_local_processes(tmp_path, tiny):
    ray = pytest.importorskip("ray")
    runs = plan(methods=["SGD", "uSF+BN+BM"], datasets=[tiny], lr_mults=[10, 1e9],
                seeds=[1, 2], base={"model": "mlp", "epochs": 2})
    local, remote = tmp_path / "local.db", tmp_path / "ray.db"
    sweep(runs, local, workers=2, threads=1, progress=False, log=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sweep(runs, remote, workers=2, threads=1, backend="ray", progress=False, log=False)
    finally:
        ray.shutdown()
    cols = ["run_key", "experiment", "method", "dataset", "lr_mult", "seed", "status",
            "test_error", "best_test_error", "best_epoch", "diverged_epoch", "epochs_done"]
    a, b = store.load(local), store.load(remote)
    a, b = (d[cols].sort_values("run_key").reset_index(drop=True) for d in (a, b))
    assert a.equals(b)
    assert set(a.status) == {"done", "diverged"}
    ecols = ["run_key", "epoch", "train_loss", "train_error", "test_error", "lr", "batch_size"]
    ea, eb = (store.load_epochs(d)[ecols].sort_values(["run_key", "epoch"])
              .reset_index(drop=True) for d in (local, remote))
    assert ea.equals(eb)


def test_bare_cuda_goes_round_robin_over_the_visible_gpus():
    from asymbp.sweep import placed_device

    assert [placed_device("cuda", w, 4) for w in range(6)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert placed_device("cuda", 3, 1) == "cuda"  # one visible GPU (e.g. a Ray actor's own)
    assert placed_device("cuda:1", 3, 4) == "cuda:1"  # an explicit index is kept
    assert placed_device("cpu", 3, 4) == "cpu"


def test_ray_gpu_share_per_worker():
    from asymbp.sweep import gpus_per_worker

    assert gpus_per_worker(8, 16) == 0.5  # two runs per GPU
    assert gpus_per_worker(8, 4) == 1.0  # never more than one GPU per run
    with pytest.raises(AsymbpError, match="no GPU"):
        gpus_per_worker(0, 2)


def test_the_store_tells_the_driver_epochs_done_and_whether_a_sweep_lives(tmp_path):
    # what the driver and `asymbp status` ask the store (no SQL of their own)
    runs = plan(methods=["SGD"], datasets=["mnist5k"], lr_mults=[1, 10], base={"epochs": 3})
    with store.Store(tmp_path / "r.db") as s:
        s.add_runs(runs)
        s.add_epoch(runs[0].key, {"epoch": 1, "train_loss": 1.0, "test_error": 50.0})
        s.add_epoch(runs[0].key, {"epoch": 2, "train_loss": 0.5, "test_error": 40.0})
        assert s.epochs_done([r.key for r in runs] + ["not-a-run"]) == {runs[0].key: 2,
                                                                        runs[1].key: 0}
    assert store.pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not store.pid_alive(child.pid)  # gone (and reaped)
