"""Bad databases, output folders and checkpoints (issue #12): each is a one-line error (exit
status 2) or a correct result. Read-only files and folders are made for real: a read-only bind
mount in a user namespace (binds root too), or a non-root user where one can run this Python."""

import io
import json
import multiprocessing as mp
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from asymbp import store
from asymbp.cli import main
from asymbp.errors import AsymbpError
from asymbp.feedback import SCHEMES
from asymbp.sweep import checkpoint_dir, lock_path, plan, sweep, take_lock
from asymbp.train import train

SRC = str(Path(__file__).resolve().parents[1] / "src")


def one_line_error(capsys, *names):
    err = capsys.readouterr().err
    assert err.startswith("asymbp: error: ") and err.count("\n") == 1, err
    for name in names:
        assert str(name) in err, err
    return err


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """npz:PATH of 60 train / 30 test 12-dim vectors, 3 classes (model "mlp")."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = (rng.normal(size=(90, 12)) + 2.0 * np.eye(12)[y * 4]).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    return f"npz:{path}"


# ---- files that are not asymbp databases ----------------------------------------------------


def _sqlite(path, *sql):
    con = sqlite3.connect(path)
    for stmt in sql:
        con.execute(stmt)
    con.commit()
    con.close()


BAD_FILES = {
    "empty": (lambda p: p.write_bytes(b""), "empty file"),
    "text": (lambda p: p.write_bytes(b"not a database\n"), "not an SQLite database"),
    "sqlite without tables": (lambda p: _sqlite(p, "PRAGMA user_version=3"), "asymbp's tables"),
    "another sqlite": (lambda p: _sqlite(p, "CREATE TABLE t (x)"), "not an asymbp results"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("command", [["status"], ["table", "--experiment", "A"],
                                     ["report", "--out", "REPORT"]])
def test_reading_a_file_that_is_not_an_asymbp_database_is_one_line(tmp_path, capsys, kind,
                                                                   command):
    db = tmp_path / "r.db"
    make, match = BAD_FILES[kind]
    make(db)
    before = db.read_bytes()
    command = [str(tmp_path / c) if c == "REPORT" else c for c in command]
    assert main([*command, "--db", str(db)]) == 2
    assert match in one_line_error(capsys, db)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]  # no report folder, no -wal


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_loading_a_file_that_is_not_an_asymbp_database_is_an_asymbp_error(tmp_path, kind):
    db = tmp_path / "r.db"
    make, match = BAD_FILES[kind]
    make(db)
    for load in (store.load, store.load_epochs, store.load_alignment):
        with pytest.raises(AsymbpError, match=match):
            load(db)


def test_a_name_with_uri_characters_is_read(tmp_path, results_db):
    db = tmp_path / "runs?v=1#x %20.db"
    results_db(db)
    assert len(store.load(db)) == 4 and store.check(db) == store.SCHEMA_VERSION


# ---- --out folders ---------------------------------------------------------------------------


def test_table_and_report_out_make_missing_folders(tmp_path, capsys, results_db):
    db = tmp_path / "r.db"
    results_db(db)
    out = tmp_path / "a" / "b" / "table.md"
    assert main(["table", "--experiment", "grid", "--db", str(db), "--out", str(out)]) == 0
    assert "SGD" in out.read_text()
    folder = tmp_path / "x" / "y" / "report"
    assert main(["report", "--db", str(db), "--out", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "index.html")
    assert (folder / "index.html").read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in folder.iterdir()) == ["index.html"]  # no temporary file left


def test_out_under_a_file_is_one_line_before_the_database_is_read(tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    missing_db = tmp_path / "none.db"  # never reached: --out is checked first
    assert main(["table", "--experiment", "A", "--db", str(missing_db),
                 "--out", str(afile / "t.md")]) == 2
    one_line_error(capsys, afile)
    assert main(["report", "--db", str(missing_db), "--out", str(afile / "rep")]) == 2
    one_line_error(capsys, afile)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---- read-only databases and folders -------------------------------------------------------

# Run in a separate process that sees some paths read-only; prints what each command did.
READER = r"""
import contextlib, io, json, sys
from asymbp.cli import main
from asymbp import store
a = json.loads(sys.argv[1])
out = {}
def cli(name, *args):
    err, so = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        rc = main(list(args))
    out[name] = [rc, err.getvalue(), so.getvalue()]
def load(name, db):
    try:
        out[name] = [0, "", str(len(store.load(db))) + " " + str(len(store.load_epochs(db)))]
    except Exception as e:
        out[name] = [2, type(e).__name__ + ": " + str(e), ""]
sweep = ["sweep", "--methods", "SGD", "--datasets", a["npz"], "--model", "mlp", "--epochs", "1",
         "--no-progress", "--db"]
for where in ("rodir", "rofile", "pending"):
    db = a[where]
    cli(where + " status", "status", "--db", db)
    cli(where + " table", "table", "--experiment", "grid", "--db", db, "--out",
        a["out"] + "/" + where + "/t.md")
    cli(where + " report", "report", "--db", db, "--out", a["out"] + "/" + where + "/report")
    load(where + " load", db)
    cli(where + " sweep", *sweep, db)
cli("new db in rodir", *sweep, a["rodir"].rsplit("/", 1)[0] + "/new.db")
cli("table out rodir", "table", "--experiment", "grid", "--db", a["rofile"], "--out",
    a["rodir"].rsplit("/", 1)[0] + "/t.md")
cli("report out rodir", "report", "--db", a["rofile"], "--out",
    a["rodir"].rsplit("/", 1)[0] + "/sub/report")
load("wal without shm load", a["walonly"])
cli("wal without shm status", "status", "--db", a["walonly"])
print(json.dumps(out))
"""


def _mount_works() -> str:
    """'' when a read-only bind mount in a user namespace can be made here, else why not."""
    d = tempfile.mkdtemp()
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount --bind -o ro {d} {d} && ! touch {d}/x 2>/dev/null"],
                           capture_output=True, text=True, timeout=30)
        return "" if r.returncode == 0 else f"no read-only bind mount: {r.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"no unshare: {err}"
    finally:
        if os.path.exists(f"{d}/x"):
            os.remove(f"{d}/x")
        os.rmdir(d)


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _nobody_works() -> str:
    """'' when a non-root user can run this Python with asymbp, else why not."""
    if os.geteuid() != 0:
        return "not root: cannot switch to another user"
    try:
        r = subprocess.run([*NOBODY, sys.executable, "-c", "import asymbp.cli, pandas, torch"],
                           capture_output=True, text=True, timeout=120, cwd="/",
                           env={**os.environ, "PYTHONPATH": SRC})
        return "" if r.returncode == 0 else ("user nobody cannot run this Python and asymbp: "
                                             + (r.stderr.strip().splitlines() or ["?"])[-1])
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"no setpriv: {err}"


@pytest.fixture(scope="module", params=["read-only mount", "non-root user"])
def readonly_world(request, results_db):
    """Databases in four situations, seen read-only by a separate process:

    rodir/r.db    a finished WAL database in a read-only folder (no -wal left)
    rofile/r.db   a read-only file in a writable folder
    pending/r.db  a read-only folder holding a killed sweep's -wal and -shm
    walonly/r.db  a read-only folder holding a -wal but no -shm

    Returns the reader's results (see READER)."""
    why = _mount_works() if request.param == "read-only mount" else _nobody_works()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="asymbp-ro-"))  # /tmp: reachable by user nobody too
    try:
        paths = {k: base / k / "r.db" for k in ("rodir", "rofile", "pending", "walonly")}
        for p in paths.values():
            p.parent.mkdir()
        results_db(paths["rodir"])
        results_db(paths["rofile"])
        (base / "live").mkdir()
        live = results_db(base / "live" / "r.db", keep_open=True)
        for suffix in ("", "-wal", "-shm"):  # what `kill -9` of a sweep leaves behind
            src = Path(f"{live.path}{suffix}")
            Path(f"{paths['pending']}{suffix}").write_bytes(src.read_bytes())
            if suffix != "-shm":
                Path(f"{paths['walonly']}{suffix}").write_bytes(src.read_bytes())
        live.close()
        (base / "out").mkdir()
        args = {k: str(v) for k, v in paths.items()} | {"out": str(base / "out"),
                                                         "npz": f"npz:{base / 'live' / 'd.npz'}"}
        before = {p: p.read_bytes() for p in base.rglob("r.db*")}
        script = base / "reader.py"
        script.write_text(READER)
        env = {**os.environ, "PYTHONPATH": SRC, "MPLCONFIGDIR": str(base / "out"),
               "OMP_NUM_THREADS": "1"}
        if request.param == "read-only mount":
            ro = [paths["rodir"].parent, paths["rofile"], paths["pending"].parent,
                  paths["walonly"].parent]
            mounts = " && ".join(f"mount --bind -o ro {shlex.quote(str(p))} "
                                 f"{shlex.quote(str(p))}" for p in ro)
            cmd = ["unshare", "-rm", "sh", "-c", f'{mounts} && exec "$0" "$@"',
                   sys.executable, str(script), json.dumps(args)]
        else:
            # root owns every file and folder (not writable by nobody) but these two
            base.chmod(0o755)
            for p in (paths["rofile"].parent, base / "out"):
                p.chmod(0o777)
            cmd = [*NOBODY, sys.executable, str(script), json.dumps(args)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=base)
        assert r.returncode == 0, r.stderr
        yield {"out": json.loads(r.stdout.strip().splitlines()[-1]), "base": base,
               "before": before, "paths": paths}
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _one_line(entry):
    rc, err, _ = entry
    assert rc == 2 and err.startswith("asymbp: error: ") and err.count("\n") == 1, entry
    return err


@pytest.mark.slow
@pytest.mark.parametrize("where", ["rodir", "rofile", "pending"])
def test_reading_commands_work_on_a_read_only_database(readonly_world, where):
    out = readonly_world["out"]
    rc, err, shown = out[f"{where} status"]
    assert rc == 0 and err == "" and "4 runs" in shown and "1 done" in shown, out
    assert out[f"{where} table"][:2] == [0, ""]
    assert "SGD" in (readonly_world["base"] / "out" / where / "t.md").read_text()
    assert out[f"{where} report"][:2] == [0, ""]
    assert (readonly_world["base"] / "out" / where / "report" / "index.html").exists()
    assert out[f"{where} load"] == [0, "", "4 2"]  # every run and epoch, the -wal's included


@pytest.mark.slow
@pytest.mark.parametrize("where", ["rodir", "rofile", "pending"])
def test_a_sweep_on_a_read_only_database_is_one_line(readonly_world, where):
    err = _one_line(readonly_world["out"][f"{where} sweep"])
    assert readonly_world["paths"][where].name in err
    assert "read-only" in err or "not writable" in err


@pytest.mark.slow
def test_read_only_folders_refuse_new_files_in_one_line(readonly_world):
    out = readonly_world["out"]
    assert "not writable" in _one_line(out["new db in rodir"])
    assert "not writable" in _one_line(out["table out rodir"])
    assert "not writable" in _one_line(out["report out rodir"])
    assert not (readonly_world["base"] / "rodir" / "new.db").exists()
    # nothing any reader did changed a database
    assert {p: p.read_bytes() for p in readonly_world["before"]} == readonly_world["before"]


@pytest.mark.slow
def test_a_pending_wal_that_cannot_be_read_is_one_line(readonly_world):
    out = readonly_world["out"]
    rc, err, _ = out["wal without shm load"]
    assert rc == 2 and err.startswith("AsymbpError: ") and "r.db-wal" in err
    assert "r.db-wal" in _one_line(out["wal without shm status"])


# ---- `asymbp run --checkpoint` ----------------------------------------------------------------


def _run(npz, ckpt, epochs=1):
    return main(["run", "--method", "SGD", "--dataset", npz, "--model", "mlp", "--epochs",
                 str(epochs), "--checkpoint", str(ckpt), "--no-progress"])


def _truncated(path):
    torch.save({"model": {"w": torch.zeros(100)}}, path)
    path.write_bytes(path.read_bytes()[:300])


BAD_CHECKPOINTS = {
    "empty": (lambda p: p.write_bytes(b""), "not a checkpoint"),
    "garbage": (lambda p: p.write_bytes(b"\x00garbage" * 50), "not a checkpoint"),
    "truncated": (_truncated, "cannot be loaded"),
    "not asymbp's": (lambda p: torch.save([1, 2, 3], p), "not an asymbp checkpoint"),
    "other network": (lambda p: torch.save({"model": {"w": torch.zeros(2)}, "optimizer": {},
                                            "history": []}, p), "does not fit this run"),
}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_run_with_a_bad_checkpoint_is_one_line_and_keeps_the_file(tmp_path, capsys, npz,
                                                                  kind):
    ckpt = tmp_path / "run.pt"
    make, match = BAD_CHECKPOINTS[kind]
    make(ckpt)
    before = ckpt.read_bytes()
    assert _run(npz, ckpt) == 2
    err = one_line_error(capsys, ckpt, match)
    assert "delete it" in err
    assert ckpt.read_bytes() == before


def test_run_with_a_folder_or_an_unwritable_place_as_checkpoint_is_one_line(tmp_path, capsys,
                                                                           npz):
    assert _run(npz, tmp_path) == 2
    assert "is a folder" in one_line_error(capsys, tmp_path)
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    assert _run(npz, afile / "run.pt") == 2
    assert "writable folder" in one_line_error(capsys, afile)


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path, capsys, npz):
    """weights_only: a pickle that would run code when loaded is refused, and the code is not
    run."""
    ckpt, marker = tmp_path / "run.pt", tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": Payload(), "optimizer": {}, "history": []}, ckpt)
    assert _run(npz, ckpt) == 2
    one_line_error(capsys, ckpt, "cannot be loaded")
    assert not marker.exists()


class Stop(Exception):
    pass


def _numbers(res):
    return json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in res["epochs"]])


@pytest.mark.parametrize("method", [f"{s}+BN+BM3" for s in SCHEMES] + ["uSF+BM1", "uSF+BM2",
                                                                        "sSF+WN", "SGD"])
def test_every_kind_of_checkpoint_loads_weights_only_and_resumes_exactly(tmp_path, npz, method,
                                                                         one_thread):
    config = {"dataset": npz, "model": "mlp", "method": method, "epochs": 2, "batch_size": 20}
    full = train(config)
    ckpt = tmp_path / "run.pt"

    def stop(row):
        raise Stop

    with pytest.raises(Stop):
        train(config, checkpoint=ckpt, on_epoch=stop)
    assert len(torch.load(ckpt, weights_only=True)["history"]) == 1
    assert _numbers(train(config, checkpoint=ckpt)) == _numbers(full)


# ---- sweeps: corrupt checkpoints, the lock -----------------------------------------------------


def _one_run(npz, epochs=2):
    return plan(methods=["SGD"], datasets=[npz], lr_mults=[1],
                base={"model": "mlp", "epochs": epochs, "batch_size": 20})


@pytest.mark.slow
def test_a_sweep_restarts_a_run_whose_checkpoint_is_corrupt(tmp_path, npz, epoch):
    db = tmp_path / "r.db"
    runs = _one_run(npz)
    key = runs[0].key
    with store.Store(db) as s:  # a killed sweep: the run is running with one stored epoch
        s.add_runs(runs)
        s.start(key, "h", "cpu", "0.1.0", "abc")
        s.add_epoch(key, {**epoch(1), "train_loss": 123.0})
    ckpt = checkpoint_dir(db) / f"{key}.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"\x00garbage" * 50)
    log = io.StringIO()
    counts = sweep(runs, db, workers=1, threads=1, progress=False, log=log)
    assert counts["done"] == 1 and counts["failed"] == 0
    lines = [l for l in log.getvalue().splitlines() if str(ckpt) in l]
    assert len(lines) == 1 and "moved it to" in lines[0], log.getvalue()
    ep = store.load_epochs(db)
    assert list(ep.epoch) == [1, 2] and 123.0 not in list(ep.train_loss)
    assert store.load(db).epochs_done[0] == 2
    assert (ckpt.parent / f"{key}.pt.corrupt").read_bytes() == b"\x00garbage" * 50
    assert not ckpt.exists()
    ref = train(runs[0].config)  # the restart is a run from scratch
    assert store.load(db).best_test_error[0] == ref["best_test_error"]


def test_a_held_lock_refuses_a_second_sweep_in_one_line(tmp_path, capsys, npz):
    db = tmp_path / "r.db"
    runs = _one_run(npz, epochs=1)
    fd = take_lock(db)
    try:
        with pytest.raises(AsymbpError, match=f"another sweep \\(pid {os.getpid()} on .*\\) "
                                              "is writing"):
            sweep(runs, db, workers=1, progress=False, log=False)
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db.lock"]  # no database written


def test_a_stale_lock_file_does_not_block_a_sweep(tmp_path, npz, result):
    db = tmp_path / "r.db"
    lock_path(db).write_text("pid 999999 on a-dead-host")  # what kill -9 leaves: a file
    store.Store(db).close()
    runs = _one_run(npz, epochs=1)
    with store.Store(db) as s:
        s.add_runs(runs)
        s.finish(runs[0].key, result(1.0))
    counts = sweep(runs, db, workers=1, progress=False, log=False)  # nothing to run
    assert counts["skipped"] == 1 and counts["done"] == 1


def _race(db, npz, barrier, results):
    runs = _one_run(npz, epochs=1)
    barrier.wait()
    try:
        counts = sweep(runs, db, workers=1, threads=1, progress=False, log=False)
        results.put(("ran", counts["done"], counts["skipped"]))
    except AsymbpError as err:
        results.put(("refused", str(err)))


@pytest.mark.slow
def test_two_sweeps_started_at_one_instant_run_each_run_once(tmp_path, npz):
    db = str(tmp_path / "r.db")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(db, npz, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [g[0] for g in got] == ["ran", "refused"], got
    assert got[0][1:] == (1, 0)  # the winner ran the run
    assert got[1][1].startswith("another sweep (pid ") and "\n" not in got[1][1]
    ep = store.load_epochs(db)
    assert len(ep) == 1 and list(store.load(db).status) == ["done"]
