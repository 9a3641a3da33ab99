"""The packed trainer (asymbp.packed): a cell's runs trained as one wide model give the runs
train() gives one by one — metrics within rounding, feedback draws bitwise — a diverging copy
leaves the others alone, what cannot be packed falls back, and a packed sweep survives kill -9.

The oracle is `train()` itself. A grouped convolution / batched matmul rounds differently from
the single one (its GEMM is blocked differently), about 1 ulp per output (measured: logits
within 3e-8, gradients within 2e-7 relative after one step), so packed and one-by-one runs are
equal up to how much training amplifies an ulp-level difference:

- SGD: smoothly. Over the 4 steps here the worst deviation measured over every packable scheme
  was 8e-7 relative in the loss and 7e-5 degrees in an angle (AVX-512 kernels), but 0.012
  degrees on AVX2 kernels for uSF without BN: fixed tolerances 1e-5 and 1e-3 and one test
  example (a prediction that close to a tie may flip) do not cover every CPU.
- Batch Manhattan: not smoothly. sign(g) of a gradient entry within rounding of zero flips, and
  the weight moves by 2·lr instead of ~0: after 4 steps the deviation reached 2e-3 relative.
So the tolerance is calibrated in the test itself (`sensitivity`): train() alone against
train() alone started from W moved by one ulp (the first layer up; every layer up; every layer
down: equally valid roundings), the worst of the three times 10, plus the fixed tolerances.
"""

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from asymbp import store
from asymbp import train as train_module
from asymbp.errors import AsymbpError
from asymbp.feedback import SCHEMES
from asymbp.packed import cell_key, group_cells, pack_problem, packable_schemes, train_packed
from asymbp.config import TrainConfig
from asymbp.train import train

LOSS_RTOL, ANGLE_ATOL = 1e-5, 1e-3
EXAMPLE = 1  # test examples whose prediction may flip at a near tie


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, write_vectors):
    """npz:PATH of 100 train / 100 test 64-dim vectors, 10 classes (model "mlp")."""
    return write_vectors(tmp_path_factory.mktemp("data") / "vectors.npz", 100, 100, seed=1)


def method(scheme: str, bn: bool, bm: bool) -> str:
    if scheme == "BP":
        return {(False, False): "SGD", (True, False): "BN", (False, True): "BM",
                (True, True): "BN+BM"}[bn, bm]
    return scheme + ("+BN" if bn else "") + ("+BM" if bm else "")


def deviation(a: list[dict], b: list[dict]) -> dict:
    """The worst per-epoch differences of two lists of train() results (same runs)."""
    worst = {"loss": 0.0, "error": 0.0, "angle": 0.0}
    for ra, rb in zip(a, b):
        assert ra["diverged"] == rb["diverged"] and ra["diverged_epoch"] == rb["diverged_epoch"]
        assert len(ra["epochs"]) == len(rb["epochs"])
        for ea, eb in zip(ra["epochs"], rb["epochs"]):
            assert ea["epoch"] == eb["epoch"] and ea["lr"] == eb["lr"]
            if not math.isfinite(eb["train_loss"]):
                assert not math.isfinite(ea["train_loss"])
                continue
            worst["loss"] = max(worst["loss"],
                                abs(ea["train_loss"] - eb["train_loss"]) / abs(eb["train_loss"]))
            if math.isfinite(eb["test_error"]):
                worst["error"] = max(worst["error"], abs(ea["test_error"] - eb["test_error"]))
            assert ("alignment" in ea) == ("alignment" in eb)
            for la, lb in zip(ea.get("alignment", []), eb.get("alignment", [])):
                for k in ("angle", "grad_angle"):
                    if math.isfinite(lb[k]):
                        worst["angle"] = max(worst["angle"], abs(la[k] - lb[k]))
    return worst


def one_ulp(monkeypatch, layers: str, toward: float):
    """train() with the initial W of the first weight layer (`layers="first"`) or of every one
    (`"all"`) moved by one ulp toward `toward` (+inf or -inf): an equally valid rounding."""
    build = train_module.build_model

    def nudged(cfg, spec, tensors):
        model = build(cfg, spec, tensors)
        weights = [m.weight for m in model.modules() if hasattr(m, "feedback")]
        with torch.no_grad():
            for W in weights[:1] if layers == "first" else weights:
                W.copy_(torch.nextafter(W, torch.full_like(W, toward)))
        return model

    monkeypatch.setattr(train_module, "build_model", nudged)


def sensitivity(configs, alone, monkeypatch) -> dict:
    """How far train() moves from itself under ulp-level changes of its start: the worst
    deviation over three of them (first layer +1 ulp, every layer +1 ulp, every layer -1 ulp).
    A packed run differs from one alone by ulp-level rounding everywhere, so this is the scale
    its deviation is measured against; one perturbation alone underestimated it up to 30x on
    AVX2 kernels (uSF+BM without BN, k = 10)."""
    worst = {"loss": 0.0, "error": 0.0, "angle": 0.0}
    for layers, toward in (("first", math.inf), ("all", math.inf), ("all", -math.inf)):
        with monkeypatch.context() as mp:
            one_ulp(mp, layers, toward)
            dev = deviation([train(c) for c in configs], alone)
        worst = {k: max(worst[k], dev[k]) for k in worst}
    return worst


def assert_close(packed, alone, n_test, calibrated=None):
    dev = deviation(packed, alone)
    tol = {"loss": LOSS_RTOL, "error": 100.0 * EXAMPLE / n_test, "angle": ANGLE_ATOL}
    if calibrated is not None:
        tol = {k: tol[k] + 10 * calibrated[k] for k in tol}
    assert all(dev[k] <= tol[k] for k in tol), (dev, tol)


def cell(data, method, lr_mults=(1, 10, 0.1), seeds=(1, 1, 1), **kw):
    base = {**dict(dataset=data, model="mlp", epochs=2, batch_size=50, bn_stat_batches=2,
                   method=method), **kw}
    return [dict(base, lr_mult=k, seed=s) for k, s in zip(lr_mults, seeds)]


# every scheme that packs, derived from the registry (a new scheme is covered the day it comes)
@pytest.mark.parametrize("bm", [False, True], ids=["SGD", "BM"])
@pytest.mark.parametrize("bn", [False, True], ids=["noBN", "BN"])
@pytest.mark.parametrize("scheme", packable_schemes())
def test_a_packed_cell_equals_its_runs_one_by_one(scheme, bn, bm, vectors, one_thread,
                                                  monkeypatch):
    configs = cell(vectors, method(scheme, bn, bm))
    packed = train_packed(configs)
    alone = [train(c) for c in configs]
    # every case calibrated: on AVX2 kernels even SGD's angles (uSF without BN, k = 10, whose
    # unscaled sign feedback gives large gradients) moved 0.012 degrees, above a fixed 1e-3
    assert_close(packed, alone, 100, sensitivity(configs, alone, monkeypatch))
    for p, a in zip(packed, alone):
        assert set(p) == set(a) and p["config"] == a["config"] and p["params"] == a["params"]


@pytest.mark.parametrize("options", [
    {"method": "uSF+BN", "bn_stats": "running"},  # BN momentum 0.1 during training
    {"method": "frSF+BN", "protocol": "honest", "val_size": 20},
    {"method": "uSF+BN+Adam", "loss": "mean", "base_lr": 1e-3},
    {"method": "RndF@bottom"},  # C2: the last layer frozen
    {"method": "uSF+BN+WN", "lr_milestones": "1:0.1", "init": "xavier"},
], ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_the_recipes_options_pack_too(options, vectors, one_thread, monkeypatch):
    configs = cell(vectors, **options)
    packed = train_packed(configs)
    alone = [train(c) for c in configs]
    calibrated = None
    if "Adam" in options["method"]:  # Adam's first step m/sqrt(v) is sign(g): BM's amplifier
        calibrated = sensitivity(configs, alone, monkeypatch)
    assert_close(packed, alone, 100, calibrated)
    for p, a in zip(packed, alone):
        assert p.get("val_error") == pytest.approx(a.get("val_error"), abs=100 * EXAMPLE / 20)


def test_packed_scheme_list_leaves_out_exactly_dfa_and_wm():
    left_out = set(SCHEMES) - set(packable_schemes())
    assert left_out == {n for n, c in SCHEMES.items() if c.direct or c.mirrored}
    assert {"DFA", "WM"} <= left_out


@pytest.mark.parametrize("meth", ["uSF+BN", "frSF-25"])
def test_conv_copies_with_different_seeds(meth, one_thread, monkeypatch):
    """The mnist network (grouped convolutions, each copy its own batches) on synthetic
    mnist-shaped data: 3 seeds. uSF's unscaled sign feedback gives the first conv gradients
    of ~6e5 (steps of ~100 per weight at k = 0.3): training amplifies rounding as much as
    Batch Manhattan does, so the tolerance is calibrated here too (the step test below checks
    the gradients themselves)."""
    configs = [dict(c, model="mnist", dataset="mnist", synthetic=100)
               for c in cell(None, meth, lr_mults=(1, 3, 0.3), seeds=(1, 2, 3))]
    packed = train_packed(configs)
    alone = [train(c) for c in configs]
    assert_close(packed, alone, 100, sensitivity(configs, alone, monkeypatch))


@pytest.mark.parametrize("seeds", [(1, 1, 1), (1, 2, 3)], ids=["shared", "stacked"])
@pytest.mark.parametrize("scheme", packable_schemes())
def test_one_packed_step_gives_each_copy_its_gradients(scheme, seeds, one_thread):
    """The forward and backward of the mnist network with BN, packed, against each copy's own
    (train()'s build, the same batch): logits and every parameter's gradient. A gradient entry
    sums B·H·W = 20·24·24 products of the first conv: rounding up to about sqrt(11520)·eps·max
    = 1.3e-5 of the tensor's largest entry; tolerance 1e-4 of it. The conv biases before BN
    have a gradient of exactly 0 in exact arithmetic (BN removes the mean), so theirs is pure
    rounding noise: bounded by the same tolerance of the weights' largest entry."""
    import torch.nn.functional as F

    from asymbp.config import check_config
    from asymbp.packed import PackedNet
    from asymbp.train import build_model, prepare_data

    cfgs = [TrainConfig(dataset="mnist", synthetic=20, model="mnist", method=scheme + "+BN",
                        lr_mult=k, seed=s) for k, s in zip((1, 10, 0.1), seeds)]
    spec = check_config(cfgs[0])
    t = prepare_data(cfgs[0], torch.device("cpu"))
    models = []
    for c in cfgs:
        torch.manual_seed(c.seed)
        models.append(build_model(c, spec, t))
    x, y = t.x_train, t.y_train
    shared = len(set(seeds)) == 1
    out = PackedNet(models)(x if shared else torch.cat([x] * 3, 1), shared)  # (B, 3, 10)
    F.cross_entropy(out.transpose(1, 2), y.unsqueeze(1).expand(-1, 3),
                    reduction="none").sum().backward()
    packed = [{n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
              for m in models]
    for i, m in enumerate(models):
        m.zero_grad()
        o = m(x)
        assert torch.allclose(o, out[:, i], rtol=0, atol=1e-5 * o.abs().max().item())
        F.cross_entropy(o, y, reduction="sum").backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        assert grads.keys() == packed[i].keys() and grads
        for n, g in grads.items():
            ref = grads[n.replace("bias", "weight")] if n.endswith("bias") else g
            assert (g - packed[i][n]).abs().max() <= 1e-4 * ref.abs().max(), n


def _state_after_epoch_1(run, path):
    """The checkpoint a run wrote after its first epoch (read while it trains the second)."""
    seen = {}

    def grab(*args):
        if "state" not in seen:
            seen["state"] = torch.load(path, weights_only=True)["model"]
    run(grab)
    return seen["state"]


@pytest.mark.parametrize("meth", ["brSF-25+BN+BM", "frSF-50", "RndF+BN", "PFA+BN", "sSF"])
def test_feedback_draws_are_bitwise_those_of_the_run_alone(meth, vectors, tmp_path, one_thread):
    configs = cell(vectors, meth, lr_mults=(1, 0.1), seeds=(1, 2))
    paths = [tmp_path / f"p{i}.pt" for i in range(2)]
    # packed: copy 0's checkpoint after its epoch 1; alone: run 0's
    packed = _state_after_epoch_1(
        lambda cb: train_packed(configs, checkpoints=paths,
                                on_epoch=lambda i, row: cb() if i == 0 else None), paths[0])
    alone = _state_after_epoch_1(
        lambda cb: train(configs[0], checkpoint=tmp_path / "a.pt", on_epoch=lambda r: cb()),
        tmp_path / "a.pt")
    assert packed.keys() == alone.keys()
    fixed = [k for k in alone if ".feedback." in k and not k.endswith(("R", ".weight"))
             or k.endswith("_extra_state")]
    if meth.startswith("RndF"):
        fixed.append(next(k for k in alone if k.endswith("feedback.weight")))
    assert fixed
    for k in fixed:
        a, p = alone[k], packed[k]
        if isinstance(a, dict):  # brSF: the generator's state and the current draw M∘S_p
            assert torch.equal(a["generator"], p["generator"]) and torch.equal(a["draw"], p["draw"])
        else:
            assert torch.equal(a, p), k
    # V at the start: the same copy built by train()'s recipe
    torch.manual_seed(1)
    from asymbp.packed import _Copy
    from asymbp.config import check_config
    from asymbp.train import build_model, prepare_data

    cfg = TrainConfig.from_dict(configs[0])
    spec = check_config(cfg)
    tensors = prepare_data(cfg, torch.device("cpu"))
    copy = _Copy(cfg, None, tensors, spec, torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, spec, tensors)
    for (_, a), (_, b) in zip(model.named_modules(), copy.model.named_modules()):
        if hasattr(a, "feedback"):
            assert torch.equal(a.feedback_weight(), b.feedback_weight())


def test_a_diverging_copy_is_frozen_and_the_others_are_their_runs_alone(vectors, one_thread):
    configs = cell(vectors, "SGD", lr_mults=(1, 1e5, 0.1), epochs=3)
    packed = train_packed(configs)
    alone = [train(c) for c in configs]
    assert alone[1]["diverged"] and packed[1]["diverged"]
    assert packed[1]["diverged_epoch"] == alone[1]["diverged_epoch"] < 3
    assert len(packed[1]["epochs"]) == packed[1]["diverged_epoch"]
    assert math.isnan(packed[1]["test_error"])
    assert_close(packed, alone, 100)  # the diverged copy's rows included
    for r in (packed[0], packed[2]):
        assert not r["diverged"] and len(r["epochs"]) == 3
        assert all(math.isfinite(e["train_loss"]) for e in r["epochs"])


def test_what_cannot_pack_runs_one_by_one_with_the_reason(vectors, one_thread):
    configs = cell(vectors, "DFA", lr_mults=(1, 0.1))
    lines = []
    packed = train_packed(configs, log=lines.append)
    assert len(lines) == 1 and "DFA" in lines[0] and "one by one" in lines[0]
    alone = [train(c) for c in configs]
    for p, a in zip(packed, alone):  # the same code path: bitwise
        assert [e["train_loss"] for e in p["epochs"]] == [e["train_loss"] for e in a["epochs"]]
    assert "mirror" in pack_problem(TrainConfig(method="WM"))
    assert pack_problem(TrainConfig(method="uSF+BN", augment="crop-flip"))
    assert pack_problem(TrainConfig(method="uSF+BN")) is None


def test_only_runs_of_one_cell_pack_together(vectors):
    a, b = cell(vectors, "uSF", lr_mults=(1, 0.1))
    c = dict(a, method="RndF")
    assert cell_key(a) == cell_key(b) != cell_key(c)
    assert group_cells([a, c, b, a], 2) == [[0, 2], [1], [3]]
    assert group_cells([a, b], 1) == [[0], [1]]
    with pytest.raises(AsymbpError, match="differ only in lr_mult and seed"):
        train_packed([a, c])


def test_a_pack_resumes_from_its_copies_checkpoints(vectors, tmp_path, one_thread):
    """Stopped after copy 0 saved epoch 2 but copy 1 only epoch 1, the pack resumes each copy
    from its own epoch (copy 1 catches up first) to what the uninterrupted pack reaches;
    train() resumes a packed copy's checkpoint too."""
    configs = cell(vectors, "uSF+BN", lr_mults=(1, 0.1, 3), epochs=3)
    whole = train_packed(configs)
    paths = [tmp_path / f"r{i}.pt" for i in range(3)]

    class Stop(Exception):
        pass

    def stop(i, row):
        if row["epoch"] == 2 and i == 1:
            raise Stop

    with pytest.raises(Stop):
        train_packed(configs, checkpoints=paths, on_epoch=stop)
    saved = [torch.load(p, weights_only=True)["history"] for p in paths]
    assert [len(h) for h in saved] == [2, 2, 1]  # copy 1 saved before streaming epoch 2
    import shutil

    shutil.copy(paths[2], tmp_path / "alone.pt")  # copy 2 after epoch 1, resumed by train()
    by_itself = train(configs[2], checkpoint=tmp_path / "alone.pt")
    resumed = train_packed(configs, checkpoints=paths)
    assert_close(resumed, whole, 100)
    assert_close([by_itself], [whole[2]], 100)
    assert by_itself["epochs"][0] == saved[2][0]
    for r, h in zip(resumed, saved):
        assert r["epochs"][:len(h)] == h  # the finished epochs are not redone
    one = train(configs[2], checkpoint=paths[2])  # finished: nothing left to train
    assert one["epochs"] == resumed[2]["epochs"]


# ---- the sweep ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def longer(tmp_path_factory, write_vectors):
    """2000 x 64 vectors, 10 classes: a packed cell lasts long enough to be killed."""
    return write_vectors(tmp_path_factory.mktemp("data") / "longer.npz", 2000, 200, seed=2)


def test_packed_sweep_killed_with_kill_9_loses_and_duplicates_nothing(tmp_path, longer,
                                                                     wait_for):
    db = str(tmp_path / "p.db")
    epochs = 6
    cmd = [sys.executable, "-m", "asymbp", "sweep", "--methods", "uSF+BN", "--datasets",
           longer, "--model", "mlp", "--lr-mults", "10,1,0.1", "--epochs", str(epochs),
           "--workers", "1", "--threads", "1", "--pack", "3", "--db", db, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for(db, lambda df: store.load_epochs(db).shape[0] >= 4, timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker, no clean-up
        proc.wait()
    before = store.load_epochs(db)
    assert 4 <= len(before) < 3 * epochs
    ckpts = list((tmp_path / "p.db.runs").glob("*.pt"))
    assert len(ckpts) == 3  # each copy its own checkpoint
    time.sleep(1.5)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "3 runs trained as one packed model" in again.stdout
    after = store.load(db).set_index("run_key")
    assert len(after) == 3 and after.index.is_unique and (after.status == "done").all()
    ep = store.load_epochs(db)
    assert len(ep) == 3 * epochs and not ep.duplicated(["run_key", "epoch"]).any()
    # the epochs stored before the kill were not redone
    kept = before.set_index(["run_key", "epoch"])
    now = ep.set_index(["run_key", "epoch"]).loc[kept.index]
    assert (now["train_loss"] == kept["train_loss"]).all()
    assert not list((tmp_path / "p.db.runs").glob("*.pt"))


@pytest.mark.parametrize("args", [["--pack", "0"], ["--pack", "3", "--no-pack"],
                                  ["--pack", "3", "--backend", "ray"]])
def test_sweep_bad_pack_options_are_one_line(tmp_path, capsys, args):
    from asymbp.cli import main

    db = tmp_path / "r.db"
    assert main(["sweep", "--methods", "SGD", "--datasets", "mnist5k", "--epochs", "1",
                 "--db", str(db), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asymbp: error: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_the_sweep_packs_each_cell_on_a_gpu_and_not_on_the_cpu(vectors):
    from asymbp.sweep import PackTask, plan
    from asymbp.sweep.driver import GPU_PACK, default_pack, packed_tasks
    from asymbp.sweep.local import Task

    runs = plan(methods=["uSF", "SGD"], datasets=[vectors], lr_mults=[10, 1, 0.1],
                seeds=[1, 2], base={"model": "mlp", "device": "cpu"})
    assert default_pack(runs) == 1
    on_gpu = plan(methods=["uSF"], datasets=[vectors], base={"model": "mlp", "device": "cuda"})
    assert default_pack(on_gpu) == GPU_PACK == 5
    tasks = packed_tasks([Task(r.key, r.config, None) for r in runs], 4)
    assert all(isinstance(t, PackTask) for t in tasks)
    keys = [k for t in tasks for k in t.keys]
    assert sorted(keys) == sorted(r.key for r in runs)  # every run once
    for t in tasks:  # one cell per pack, at most 4 runs
        assert len({cell_key(m.config) for m in t.tasks}) == 1 and len(t.tasks) <= 4


@pytest.mark.parametrize("model,shared", [("mnist", False), ("mnist", True), ("mlp512", False),
                                          ("mlp512", True)])
def test_no_arithmetic_crosses_copies(model, shared, one_thread):
    """One copy's weights all NaN: the other copies' logits and gradients are bitwise what they
    are without it (the same kernels on the same shapes, so bitwise is the right test): grouped
    convs, bmm, the wide fc of a shared input, N·C batch norm and the per-copy losses keep the
    copies apart."""
    import torch.nn.functional as F

    from asymbp.config import check_config
    from asymbp.packed import PackedNet
    from asymbp.train import build_model, prepare_data

    cfgs = [TrainConfig(dataset="mnist", synthetic=20, model=model, method="RndF+BN",
                        lr_mult=k, seed=s) for k, s in ((1, 1), (10, 2), (0.1, 3))]
    spec = check_config(cfgs[0])
    t = prepare_data(cfgs[0], torch.device("cpu"))

    def step(poison: bool):
        models = []
        for c in cfgs:
            torch.manual_seed(c.seed)
            models.append(build_model(c, spec, t))
        if poison:
            with torch.no_grad():
                for p in models[1].parameters():
                    p.fill_(math.nan)
        x, y = t.x_train, t.y_train
        out = PackedNet(models)(x if shared else torch.cat([x] * 3, 1), shared)
        F.cross_entropy(out.transpose(1, 2), y.unsqueeze(1).expand(-1, 3),
                        reduction="none").sum().backward()
        return out.detach(), [[p.grad for p in m.parameters()] for m in models]

    clean, poisoned = step(False), step(True)
    assert poisoned[0][:, 1].isnan().all()
    for i in (0, 2):
        assert torch.equal(clean[0][:, i], poisoned[0][:, i])
        for a, b in zip(clean[1][i], poisoned[1][i]):
            assert torch.equal(a, b)
