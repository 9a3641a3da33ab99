"""One run (DESIGN §4, §6): determinism, schedules, the paper's BN statistics, divergence,
protocols, checkpoints, feedback weight decay, Experiment C2's frozen layers.

Everything runs on tiny `npz:` datasets with the `mlp` network, a few seconds in all.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import asymbp.train as T
from asymbp.errors import AsymbpError
from asymbp.train import TrainConfig, batch_schedule, lr_at, refresh_bn_stats, train

D, C = 12, 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """A small 3-class problem: Gaussian blobs in 12 dimensions, 240 train / 90 test."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(C, D)) * 1.5

    def make(n):
        y = rng.integers(0, C, size=n)
        return (centers[y] + rng.normal(size=(n, D))).astype(np.float32), y

    x_train, y_train = make(240)
    x_test, y_test = make(90)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def cfg(npz, **kw):
    base = dict(dataset=npz, model="mlp", method="SGD", epochs=3, batch_size=40, lr_mult=1.0)
    base.update(kw)
    return base


def numbers(result):
    """Everything in the per-epoch rows but wall-clock time."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in result["epochs"]]


def load_ckpt(path):
    return torch.load(path, weights_only=False)


# ---- schedules ---------------------------------------------------------------------------


def test_lr_schedule_paper_length():
    base = 5e-4
    assert [lr_at(e, 65, base) for e in (1, 50)] == [base, base]
    assert [lr_at(e, 65, base) for e in (51, 60)] == [base / 10] * 2
    assert [lr_at(e, 65, base) for e in (61, 65)] == [base / 100] * 2


@pytest.mark.parametrize("epochs", [1, 3, 13, 20, 130])
def test_lr_schedule_keeps_the_fractions(epochs):
    lrs = [lr_at(e, epochs, 1.0) for e in range(1, epochs + 1)]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == 1.0
    n_base, n_tenth = lrs.count(1.0), lrs.count(0.1)
    assert n_base == round(epochs * 50 / 65)
    assert n_base + n_tenth == round(epochs * 60 / 65)
    assert set(lrs) <= {1.0, 0.1, 0.01}


def test_lr_in_run_is_multiplier_times_base(npz):
    r = train(cfg(npz, epochs=13, lr_mult=10, alignment=False))
    lrs = [row["lr"] for row in r["epochs"]]
    assert lrs == [lr_at(e, 13, 5e-3) for e in range(1, 14)]
    assert lrs[0] == pytest.approx(5e-3) and lrs[-1] == pytest.approx(5e-5)


def test_batch_schedule():
    at = batch_schedule(TrainConfig(batch_schedule="100:3,500"))
    assert [at(e) for e in range(1, 7)] == [100, 100, 100, 500, 500, 500]
    at = batch_schedule(TrainConfig(batch_schedule="10:1,20:2,30"))
    assert [at(e) for e in range(1, 6)] == [10, 20, 20, 30, 30]
    assert batch_schedule(TrainConfig(batch_size=64))(9) == 64
    for bad in ("100:3", "abc", "100:3,0", "100:x,5", "100,200"):
        if bad == "100:3":  # a schedule ending with a count keeps its last batch size
            assert batch_schedule(TrainConfig(batch_schedule=bad))(5) == 100
            continue
        with pytest.raises(AsymbpError):
            batch_schedule(TrainConfig(batch_schedule=bad))


def test_batch_schedule_in_run(npz):
    r = train(cfg(npz, batch_schedule="40:1,120", alignment=False))
    assert [row["batch_size"] for row in r["epochs"]] == [40, 120, 120]


# ---- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["SGD", "brSF+BN+BM"])
def test_same_config_same_numbers(npz, method):
    a = train(cfg(npz, method=method))
    b = train(cfg(npz, method=method))
    assert numbers(a) == numbers(b)
    c = train(cfg(npz, method=method, seed=2))
    assert numbers(c) != numbers(a)


# ---- the paper's test-time BN statistics ---------------------------------------------------


def _mlp_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8, affine=False, momentum=0.0), nn.ReLU(),
                         nn.Linear(8, C))


def test_refresh_bn_stats_is_an_ema_over_training_batches():
    model = _mlp_bn()
    x = torch.randn(230, D)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    refresh_bn_stats(model, x, batch=50, n_batches=20, alpha=0.05,
                     gen=torch.Generator().manual_seed(3))
    # Oracle: the same permutation, every batch of it (230/50 -> 5 batches < 20), EMA by hand.
    perm = torch.randperm(230, generator=torch.Generator().manual_seed(3))
    mean, var = torch.zeros(8), torch.ones(8)
    for i in range(0, 230, 50):
        z = x[perm[i:i + 50]] @ before["0.weight"].T + before["0.bias"]
        mean = 0.95 * mean + 0.05 * z.mean(0)
        var = 0.95 * var + 0.05 * z.var(0, unbiased=True)
    bn = model[1]
    # float32, values O(1): BN's kernel and the oracle each sum 50 rows and 12-term dot products
    # in their own order, ~50·eps ≈ 6e-6 relative at most; the default float32 tolerance
    # (rtol 1.3e-6, atol 1e-5) holds that (measured: 1e-8).
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    # no weight changes, the mode is restored, training batches leave the statistics alone
    for k in ("0.weight", "0.bias", "3.weight", "3.bias"):
        assert torch.equal(model.state_dict()[k], before[k])
    assert not model.training and bn.momentum == 0.0
    assert all(p.grad is None for p in model.parameters())


def test_refresh_bn_stats_uses_at_most_n_batches():
    model = _mlp_bn()
    x = torch.randn(1000, D)
    refresh_bn_stats(model, x, batch=10, n_batches=20, alpha=0.05,
                     gen=torch.Generator().manual_seed(0))
    assert int(model[1].num_batches_tracked) == 20


def _bn_stats_oracle(path, npz, alpha):
    """Running statistics of the mlp's first BN after one refresh with the whole training set as
    one batch, starting from (0, 1): (α·mean, (1−α) + α·var), from the saved weights."""
    from asymbp.data import load

    ds = load(npz)
    x = ds.x_train
    x = (x - x.mean(0)) / x.std(0)
    state = load_ckpt(path)["model"]
    z = torch.from_numpy(x) @ state["classifier.0.weight"].T + state["classifier.0.bias"]
    return alpha * z.mean(0), (1 - alpha) + alpha * z.var(0, unbiased=True), state


def test_paper_bn_protocol_in_run(npz, tmp_path, monkeypatch):
    # Batch = the whole training set: one step per epoch, and one refresh batch whose statistics
    # do not depend on the permutation. Training batches must not move the running stats.
    path = tmp_path / "run.pt"
    train(cfg(npz, method="uSF+BN", epochs=1, batch_size=240, bn_stat_batches=1), checkpoint=path)
    mean, var, state = _bn_stats_oracle(path, npz, 0.05)
    # The oracle standardises the data in float32 where train() takes the statistics in
    # float64, then sums 240 rows: a few eps of each row's size, ~240·eps ≈ 3e-5 at most, in
    # statistics O(1) (measured: 8e-7).
    torch.testing.assert_close(state["classifier.1.running_mean"], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state["classifier.1.running_var"], var, rtol=1e-4, atol=1e-5)
    # no refresh at all (bn_stat_batches=0 with BN is a config error, so the pass is switched
    # off here): the running statistics are still the initial ones
    monkeypatch.setattr(T, "refresh_bn_stats", lambda *args: None)
    path0 = tmp_path / "none.pt"
    train(cfg(npz, method="uSF+BN", epochs=2), checkpoint=path0)
    state0 = load_ckpt(path0)["model"]
    assert torch.equal(state0["classifier.1.running_mean"], torch.zeros(512))
    assert torch.equal(state0["classifier.1.running_var"], torch.ones(512))


def test_running_bn_stats_option(npz, tmp_path):
    # Standard running averages (momentum 0.1) over the training batches, no refresh pass.
    # A vanishing learning rate keeps the weights at their initial values.
    path = tmp_path / "run.pt"
    train(cfg(npz, method="BN", epochs=1, batch_size=240, bn_stats="running", lr_mult=1e-9),
          checkpoint=path)
    mean, var, state = _bn_stats_oracle(path, npz, 0.1)
    # As above; the step of lr 5e-12 moves W by ~1e-9, far below the tolerance.
    torch.testing.assert_close(state["classifier.1.running_mean"], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state["classifier.1.running_var"], var, rtol=1e-4, atol=1e-5)
    assert int(state["classifier.1.num_batches_tracked"]) == 1


def test_bn_affine_only_for_symmetric_methods(npz, tmp_path):
    for method, affine in (("BN", True), ("BN+BM", True), ("uSF+BN", False), ("RndF+BN", False)):
        path = tmp_path / f"{method}.pt"
        train(cfg(npz, method=method, epochs=1, alignment=False), checkpoint=path)
        assert ("classifier.1.weight" in load_ckpt(path)["model"]) == affine, method


# ---- divergence ------------------------------------------------------------------------------


def test_divergence_in_first_epoch(npz):
    r = train(cfg(npz, lr_mult=1e12))
    assert r["diverged"] and r["diverged_epoch"] == 1
    assert len(r["epochs"]) == 1 and r["epochs"][0]["diverged"]
    assert math.isnan(r["test_error"]) and math.isnan(r["best_test_error"])


def test_divergence_epoch_is_recorded(npz, monkeypatch):
    # a learning rate that explodes from epoch 3 on
    monkeypatch.setattr(T, "lr_at", lambda e, n, base, *_: base if e < 3 else base * 1e12)
    r = train(cfg(npz, epochs=5))
    assert r["diverged"] and r["diverged_epoch"] == 3
    assert [row["epoch"] for row in r["epochs"]] == [1, 2, 3]  # the run ends there
    assert math.isnan(r["test_error"])
    assert r["best_test_error"] == min(row["test_error"] for row in r["epochs"][:2])
    assert r["best_epoch"] in (1, 2)


def test_no_divergence(npz):
    r = train(cfg(npz))
    assert not r["diverged"] and r["diverged_epoch"] is None
    assert r["best_test_error"] <= r["test_error"] < 20


# ---- protocols and result keys -------------------------------------------------------------


def test_paper_protocol_fields(npz):
    r = train(cfg(npz, method="uSF+BN+BM"))
    for key in ("config", "method", "test_error", "best_test_error", "best_epoch", "diverged",
                "diverged_epoch", "epochs", "seconds", "params"):
        assert key in r
    assert r["method"] == "uSF+BN+BM" and "val_error" not in r
    assert r["best_test_error"] == min(row["test_error"] for row in r["epochs"])
    assert r["epochs"][r["best_epoch"] - 1]["test_error"] == r["best_test_error"]
    row = r["epochs"][0]
    for key in ("epoch", "lr", "batch_size", "train_loss", "train_error", "test_error", "seconds",
                "alignment"):
        assert key in row
    assert len(row["alignment"]) == 3  # every asymmetric layer
    assert {"layer", "angle", "sign_concordance", "grad_angle"} <= set(row["alignment"][0])
    assert r["params"] == 12 * 512 + 512 + 512 * 256 + 256 + 256 * 3 + 3


def test_honest_protocol_fields(npz):
    r = train(cfg(npz, protocol="honest", val_fraction=0.25, epochs=4))
    assert all("val_error" in row for row in r["epochs"])
    best = min((row["val_error"], row["epoch"]) for row in r["epochs"])
    assert (r["val_error"], r["val_epoch"]) == best
    assert r["honest_test_error"] == r["epochs"][r["val_epoch"] - 1]["test_error"]
    # the validation split is 25 % of the 240 training examples: error steps of 1/60
    assert all(abs(row["val_error"] * 60 / 100 - round(row["val_error"] * 60 / 100)) < 1e-9
               for row in r["epochs"])


# ---- checkpoints -----------------------------------------------------------------------------


class Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["SGD", "brSF+BN+BM3"])
def test_checkpoint_resume_equals_uninterrupted(npz, tmp_path, method):
    full = train(cfg(npz, method=method, epochs=4))
    path = tmp_path / "run.pt"

    def stop_after_2(row):
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(cfg(npz, method=method, epochs=4), checkpoint=path, on_epoch=stop_after_2)
    assert len(load_ckpt(path)["history"]) == 2  # saved before the epoch was streamed
    seen = []
    resumed = train(cfg(npz, method=method, epochs=4), checkpoint=path,
                    on_epoch=lambda row: seen.append(row["epoch"]))
    assert seen == [3, 4]  # the finished epochs are not redone
    assert numbers(resumed) == numbers(full)
    assert resumed["best_test_error"] == full["best_test_error"]
    # a finished run's checkpoint just returns the result
    again = train(cfg(npz, method=method, epochs=4), checkpoint=path)
    assert numbers(again) == numbers(full)


def test_checkpoint_of_another_run_is_refused(npz, tmp_path):
    path = tmp_path / "run.pt"
    train(cfg(npz, epochs=1, alignment=False), checkpoint=path)
    with pytest.raises(AsymbpError, match="different run"):
        train(cfg(npz, epochs=1, alignment=False, lr_mult=10), checkpoint=path)


def test_checkpoint_resumes_with_other_execution_and_record_fields(npz, tmp_path):
    # the fields whose role is EXECUTION or RECORD (asymbp.config.RESUME_FREE) may differ
    path = tmp_path / "run.pt"

    def stop_after_1(row):
        raise Stop

    with pytest.raises(Stop):
        train(cfg(npz, epochs=2), checkpoint=path, on_epoch=stop_after_1)
    seen, starts = [], []
    resumed = train(cfg(npz, epochs=2, alignment=False, eval_batch_size=7, channels_last=False,
                        device="cpu"), checkpoint=path, on_epoch=lambda row: seen.append(row),
                    on_start=starts.append)
    assert starts == [{"device": "cpu", "first_epoch": 2}]  # once, when epoch 2 is to run
    assert [row["epoch"] for row in resumed["epochs"]] == [1, 2] and len(seen) == 1
    assert "alignment" in resumed["epochs"][0] and "alignment" not in seen[0]


# ---- learned feedback, Experiment C2 ---------------------------------------------------------


@pytest.mark.parametrize("method", ["KP", "PFA+BN"])
def test_feedback_weight_decay_schedule(npz, tmp_path, method):
    path = tmp_path / "run.pt"
    decays = []

    def record(row):
        groups = load_ckpt(path)["optimizer"]["param_groups"]
        decays.append({g["kind"]: g["weight_decay"] for g in groups})

    train(cfg(npz, method=method, feedback_weight_decay="5e-3,1e-4", weight_decay=2e-4),
          checkpoint=path, on_epoch=record)
    assert decays == [{"weights": 2e-4, "feedback": 5e-3}] + [{"weights": 2e-4, "feedback": 1e-4}] * 2
    # without the option the feedback takes the weights' decay
    path.unlink()
    decays.clear()
    train(cfg(npz, method=method, epochs=1, weight_decay=2e-4), checkpoint=path, on_epoch=record)
    assert decays == [{"weights": 2e-4, "feedback": 2e-4}]
    with pytest.raises(AsymbpError, match="FIRST,AFTER"):
        train(cfg(npz, method=method, feedback_weight_decay="5e-3"))


def test_learned_feedback_is_trained(npz, tmp_path):
    path = tmp_path / "run.pt"
    states = []
    train(cfg(npz, method="KP", epochs=2), checkpoint=path,
          on_epoch=lambda row: states.append(load_ckpt(path)["model"]))
    key = "classifier.2.feedback.weight"
    assert not torch.equal(states[0][key], states[1][key])


@pytest.mark.parametrize("method,frozen,trained", [
    ("SGD@top", ["classifier.0", "classifier.2"], ["classifier.4"]),
    ("RndF+BN+BM@bottom", ["classifier.6"], ["classifier.0", "classifier.3"]),
])
def test_c2_frozen_layers_keep_their_initial_weights(npz, tmp_path, method, frozen, trained):
    # Two runs with different learning rates start from the same initialisation (same seed):
    # frozen layers must be equal in both, and at every epoch, trained ones must differ.
    finals = []
    for k in (1.0, 10.0):
        path = tmp_path / f"{k}.pt"
        states = []
        train(cfg(npz, method=method, lr_mult=k), checkpoint=path,
              on_epoch=lambda row: states.append(load_ckpt(path)["model"]))
        for name in frozen:
            for part in ("weight", "bias"):
                assert all(torch.equal(s[f"{name}.{part}"], states[0][f"{name}.{part}"])
                           for s in states)
        finals.append(states[-1])
    for name in frozen:
        assert torch.equal(finals[0][f"{name}.weight"], finals[1][f"{name}.weight"])
    for name in trained:
        assert not torch.equal(finals[0][f"{name}.weight"], finals[1][f"{name}.weight"])


def test_freeze_option_and_conflict(npz):
    r = train(cfg(npz, freeze="top", epochs=1, alignment=False))
    assert r["config"]["freeze"] == "top"
    with pytest.raises(AsymbpError, match="freeze"):
        train(cfg(npz, method="SGD@top", freeze="bottom"))


# ---- config errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("changes,match", [
    (dict(lr_mult=0), "multiplier"),
    (dict(lr_mult=-1), "multiplier"),
    (dict(lr_mult=float("nan")), "multiplier"),
    (dict(method="uSF+XX"), "XX"),
    (dict(model="vgg"), "model"),
    (dict(dataset="imagenet22k"), "dataset"),
    (dict(epochs=0), "epochs"),
    (dict(protocol="fancy"), "protocol"),
    (dict(bn_stats="median"), "BN"),
    (dict(freeze="middle"), "freeze"),
    (dict(compile="fastest"), "compile mode"),
    (dict(eval_batch_size=0), "batch sizes"),
])
def test_config_errors(npz, changes, match):
    with pytest.raises(AsymbpError, match=match):
        train(cfg(npz, **changes))


def test_unknown_config_key():
    with pytest.raises(AsymbpError, match="lr_multiplier"):
        TrainConfig.from_dict({"lr_multiplier": 1})


def test_weight_norm_constraint_after_every_step(npz, tmp_path):
    # +WN: after each optimizer step every asymmetric layer's ‖W‖ is back at its initial value
    path = tmp_path / "run.pt"
    train(cfg(npz, method="sSF+WN", epochs=2, lr_mult=10), checkpoint=path)
    state = load_ckpt(path)["model"]
    for name in ("classifier.0", "classifier.2", "classifier.4"):
        # ‖W·(‖W₀‖/‖W‖)‖ = ‖W₀‖ up to the rounding of the scale and of each product (eps each)
        # and of two float32 sums of up to 131 072 squares (positive terms, summed in blocks:
        # ~log₂(n)·eps ≈ 2e-6 each): rtol 1e-5 (measured: 2e-7).
        torch.testing.assert_close(state[f"{name}.weight"].norm(), state[f"{name}.w0_norm"],
                                   rtol=1e-5, atol=0)
    path2 = tmp_path / "plain.pt"
    train(cfg(npz, method="sSF", epochs=2, lr_mult=10), checkpoint=path2)
    plain = load_ckpt(path2)["model"]
    assert not torch.allclose(plain["classifier.0.weight"].norm(), plain["classifier.0.w0_norm"])
