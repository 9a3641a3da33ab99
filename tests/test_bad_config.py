"""Bad inputs (issue #12): each is one line of `AsymbpError` (exit status 2 on the command line)
or a correct result — config fields of the wrong type or range, BN without statistics, a finite
blow-up, duplicate and oversized sweeps, `convert` on models it cannot fully convert, a mirror
that is not a URL.
"""

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import asymbp
from asymbp.cli import main
from asymbp.errors import AsymbpError
from asymbp.sweep import (MAX_RUNS, MAX_SEEDS, canonical_config, parse_floats, parse_seeds,
                          plan, run_key)
from asymbp.config import TrainConfig, check_config
from asymbp.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """3 Gaussian blobs in 12 dimensions, 240 train / 90 test (test_train.py's problem)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 12)) * 1.5

    def make(n):
        y = rng.integers(0, 3, size=n)
        return (centers[y] + rng.normal(size=(n, 12))).astype(np.float32), y

    (x_train, y_train), (x_test, y_test) = make(240), make(90)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def cfg(npz, **kw):
    return TrainConfig(**{**dict(dataset=npz, model="mlp", method="SGD", epochs=1,
                                 batch_size=40, alignment=False), **kw})


def one_line_error(capsys, argv, *words):
    """Run the CLI; it must fail with status 2 and one stderr line holding every word."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("asymbp: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


# ---- types of the config fields -------------------------------------------------------------


@pytest.mark.parametrize("field,value,expected", [
    ("lr_mult", "1", "a number"),
    ("seed", "abc", "an int"),
    ("epochs", 2.9, "an int"),
    ("epochs", 3.0, "an int"),  # not rounded either: 3.0 would also be another run key than 3
    ("epochs", True, "an int"),  # bool is an int in Python, not here
    ("alignment", "no", "a bool"),
    ("model", 3, "a string or None"),
    ("eval_batch_size", 2.0, "an int or None"),
    ("compile", 1, "a bool (True/False) or a string"),
    ("scheme_options", None, "a dict"),
    ("lr_mult", torch.tensor([1.0, 2.0]), "a number"),  # a multi-line repr, shown on one line
])
def test_wrong_type_names_field_value_and_types(npz, field, value, expected):
    with pytest.raises(AsymbpError) as e:
        train(cfg(npz, **{field: value}))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"config field {field} must be {expected}" in msg
    assert f"({type(value).__name__})" in msg and " ".join(repr(value).split())[:20] in msg


def test_every_field_is_type_checked(npz):
    # the registry of fields: a field added tomorrow is checked the day it is added
    for f in dataclasses.fields(TrainConfig):
        with pytest.raises(AsymbpError, match=f"config field {f.name} must be"):
            check_config(cfg(npz, **{f.name: object()}))


def test_ints_are_numbers_for_float_fields(npz):
    check_config(cfg(npz, lr_mult=1, base_lr=1, momentum=0, weight_decay=0, diverge_loss=100))
    check_config(cfg(npz, lr_mult=np.float64(2.0), compile="default"))  # numpy floats are floats


@pytest.mark.parametrize("config", [None, 3, "mnist5k", [("epochs", 1)]])
def test_train_of_a_non_config(config):
    with pytest.raises(AsymbpError, match="must be a TrainConfig or a dict") as e:
        train(config)
    assert type(config).__name__ in str(e.value)


# ---- ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,match", [
    (dict(lr_mult=math.inf), "multiplier must be a finite number > 0, got inf"),
    (dict(lr_mult=math.nan), "multiplier must be a finite number > 0, got nan"),
    (dict(base_lr=math.inf), "base learning rate must be a finite number > 0"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(momentum=-0.1), r"momentum must be in \[0, 1\)"),
    (dict(momentum=math.nan), r"momentum must be in \[0, 1\)"),
    (dict(weight_decay=-1e-4), "weight decay must be a finite number >= 0"),
    (dict(weight_decay=math.nan), "weight decay must be a finite number >= 0"),
    (dict(feedback_weight_decay="nan,1e-4"), "feedback weight decay must be two finite"),
    (dict(feedback_weight_decay="5e-3,-1"), "feedback weight decay must be two finite"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*63\)"),
    (dict(seed=2**64), r"seed must be in \[0, 2\*\*63\)"),
    (dict(data_seed=-1), r"data_seed must be in \[0, 2\*\*63\)"),
    (dict(bn_stat_alpha=math.nan), "alpha"),
    (dict(protocol="honest", val_fraction=math.nan), "val_fraction"),
    (dict(diverge_loss=0.0), "diverge_loss must be > 0"),
    (dict(diverge_loss=math.nan), "diverge_loss must be > 0"),
])
def test_out_of_range_values(npz, changes, match):
    with pytest.raises(AsymbpError, match=match):
        check_config(cfg(npz, **changes))


def test_bn_stat_batches_zero_needs_no_bn_or_running_stats(npz, capsys):
    # 0 batches with BN and the paper's statistics: the test would use mean 0, variance 1
    with pytest.raises(AsymbpError, match="bn_stat_batches >= 1") as e:
        check_config(cfg(npz, method="uSF+BN+BM", bn_stat_batches=0))
    assert "bn_stats='running'" in str(e.value)
    check_config(cfg(npz, method="uSF+BM", bn_stat_batches=0))  # no BN: no pass to run
    check_config(cfg(npz, method="uSF+BN", bn_stat_batches=0, bn_stats="running"))
    one_line_error(capsys, ["run", "--dataset", npz, "--model", "mlp", "--method", "uSF+BN",
                            "--bn-stat-batches", "0"], "--bn-stat-batches", "batch norm")


def test_run_option_errors(npz, capsys):
    for n in ("0", "-1"):
        one_line_error(capsys, ["run", "--dataset", npz, "--nproc", n], "--nproc must be >= 1")
    one_line_error(capsys, ["run", "--dataset", npz, "--lr-mult", "inf"], "finite number > 0")
    one_line_error(capsys, ["run", "--dataset", npz, "--momentum", "1"], "momentum")


def test_empty_method_string_is_an_error(capsys):
    one_line_error(capsys, ["methods", ""], "empty method string")
    assert main(["methods"]) == 0  # no argument: the grammar and every scheme
    assert "uSF" in capsys.readouterr().out


# ---- divergence ------------------------------------------------------------------------------


def test_finite_blow_up_is_diverged(npz):
    # Batch Manhattan with BN at k = 1e8: every step moves each weight by 5e4, the loss stays
    # finite (~1e11 in epoch 1) while the error is near chance; that is a diverged run.
    r = train(cfg(npz, method="uSF+BN+BM", lr_mult=1e8, epochs=3))
    loss = r["epochs"][0]["train_loss"]
    assert math.isfinite(loss) and loss > TrainConfig().diverge_loss
    assert r["diverged"] and r["diverged_epoch"] == 1 and len(r["epochs"]) == 1
    assert r["epochs"][0]["diverged"] and math.isnan(r["test_error"])


def test_diverge_loss_is_the_bound(npz):
    # k = 1e4 with BN+BM: a mean loss near 100 in epoch 1, still learning (a few % error)
    low = train(cfg(npz, method="uSF+BN+BM", lr_mult=1e4, diverge_loss=20.0))
    assert low["diverged"] and low["epochs"][0]["train_loss"] > 20
    off = train(cfg(npz, method="uSF+BN+BM", lr_mult=1e4, diverge_loss=math.inf))
    assert not off["diverged"] and off["epochs"][0]["train_loss"] > 20
    assert off["test_error"] < 50


def test_diverge_loss_default_leaves_run_keys_alone():
    # keys computed before the field existed: stored sweeps still find their runs
    grid = {"dataset": "mnist5k", "method": "uSF+BN+BM", "lr_mult": 10.0, "seed": 3, "epochs": 2}
    assert run_key("grid", grid) == "93634279b15b4ede"
    assert run_key("A", {"dataset": "mnist5k", "method": "SGD", "lr_mult": 1.0,
                         "seed": 1}) == "e8e098793be86f59"
    assert run_key("grid", {**grid, "diverge_loss": 1e4}) == "93634279b15b4ede"
    assert "diverge_loss" in canonical_config({**grid, "diverge_loss": 1e3})


# ---- sweeps: duplicates and size --------------------------------------------------------------


def test_plan_has_each_run_key_once(npz):
    runs = plan(methods=["SGD", "SGD", "uSF"], datasets=[npz, npz], lr_mults=[1, 1.0, 10],
                seeds=[1, 1, np.int64(2)], base={"epochs": 1})
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys)) == 2 * 2 * 2  # methods x multipliers x seeds
    assert [(r.method, r.lr_mult, r.seed) for r in runs[:3]] == [("SGD", 1.0, 1),
                                                                 ("SGD", 1.0, 2),
                                                                 ("SGD", 10.0, 1)]
    # Table 2's second uSF+BM procedure is the default one when the base already asks for it
    runs = plan("A", methods=["uSF+BM"], datasets=["mnist5k"], lr_mults=[1], seeds=[1],
                base={"batch_schedule": "100:3,500"})
    assert len(runs) == 1 and runs[0].procedure == ""
    assert parse_floats("1,1,1.0,10", "learning-rate multiplier", ()) == [1.0, 10.0]


def test_plan_values_are_not_rounded(npz):
    with pytest.raises(AsymbpError, match=r"seeds must be ints, got 2\.9"):
        plan(methods=["SGD"], datasets=[npz], lr_mults=[1], seeds=[2.9])
    with pytest.raises(AsymbpError, match="multipliers must be numbers"):
        plan(methods=["SGD"], datasets=[npz], lr_mults=["1"], seeds=[1])
    with pytest.raises(AsymbpError, match="finite number > 0"):  # every value is checked
        plan(methods=["SGD"], datasets=[npz], lr_mults=[1, math.inf], seeds=[1])
    with pytest.raises(AsymbpError, match="seed must be in"):
        plan(methods=["SGD"], datasets=[npz], lr_mults=[1], seeds=[1, -2])


def test_too_many_seeds_or_runs(npz, tmp_path, capsys):
    with pytest.raises(AsymbpError, match="1,000,000 seeds, more than 1,000") as e:
        parse_seeds("1-1000000")
    assert "shorter range" in str(e.value)
    assert len(parse_seeds(f"1-{MAX_SEEDS}")) == MAX_SEEDS
    with pytest.raises(AsymbpError, match="100,100 runs") as e:
        plan(methods=["SGD"], datasets=[npz], lr_mults=[float(k) for k in range(1, 101)],
             seeds=range(1001))
    assert f"more than {MAX_RUNS:,}" in str(e.value) and "--seeds" in str(e.value)
    one_line_error(capsys, ["sweep", "--methods", "SGD", "--datasets", npz, "--seeds",
                            "1-1000000", "--dry-run", "--db", str(tmp_path / "r.db")], "1,000,000 seeds")


def test_dry_run_lists_each_run_once_and_summarises(npz, tmp_path, capsys):
    db = str(tmp_path / "r.db")
    assert main(["sweep", "--methods", "SGD", "--datasets", npz, "--lr-mults", "1,1",
                 "--dry-run", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[-1].startswith("1 runs")
    assert main(["sweep", "--methods", "SGD", "--datasets", npz, "--lr-mults", "1",
                 "--seeds", "1-300", "--dry-run", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 202 and lines[200] == "... and 100 more"
    assert lines[-1].startswith("300 runs, 300 not yet in")


# ---- convert ---------------------------------------------------------------------------------


def test_convert_with_nothing_to_convert():
    with pytest.raises(AsymbpError) as e:
        asymbp.convert(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(3)), "uSF")
    msg = str(e.value)
    assert "\n" not in msg and "nothing to convert in Sequential" in msg
    assert "Linear, Conv2d" in msg
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(AsymbpError, match="outside exclude"):
        asymbp.convert(model, "uSF", exclude=["0"])
    assert type(model[0]) is nn.Linear


@pytest.mark.parametrize("layer", [nn.LSTM(3, 3), nn.GRU(3, 3), nn.RNN(3, 3), nn.LSTMCell(3, 3)])
def test_convert_refuses_recurrent_layers(layer):
    model = nn.Sequential(layer, nn.Linear(3, 2))
    with pytest.raises(AsymbpError, match=f"cannot convert {type(layer).__name__} at '0'"):
        asymbp.convert(model, "uSF")
    assert type(model[1]) is nn.Linear  # nothing was changed
    asymbp.convert(model, "uSF", exclude=["0"])
    assert isinstance(model[1], asymbp.AsymLinear)


class _RawWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(4, 8))  # a matrix used by hand: stays symmetric
        self.gain = nn.Parameter(torch.ones(4))  # elementwise: nothing to transport
        self.embed = nn.Embedding(5, 8)  # a lookup: no feedback path
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)


def test_convert_warns_once_for_weights_left_symmetric():
    model = _RawWeight()
    with pytest.warns(UserWarning) as record:
        asymbp.convert(model, "uSF")
    assert len(record) == 1
    msg = str(record[0].message)
    assert record[0].filename == __file__  # it points at the caller's line
    assert "2 weight(s) keep symmetric feedback" in msg
    assert "attn (MultiheadAttention: its packed input projection in_proj_weight" in msg
    assert "W (_RawWeight: a raw (4, 8) Parameter)" in msg
    assert "gain" not in msg and "embed" not in msg
    assert isinstance(model.attn.out_proj, asymbp.AsymLinear)  # the rest is converted
    assert isinstance(model.head, asymbp.AsymLinear)


def test_convert_warns_not_for_excluded_or_fully_converted_models():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 3))
        asymbp.convert(model, "uSF", exclude=["0"])
        mlp = asymbp.convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "PFA")
        asymbp.convert(mlp, "uSF")  # PFA's learned B, R inside the converted layers are fine
        for key, kw in (("mnist", {}), ("mlp", {"in_channels": 12}), ("resnet20", {})):
            asymbp.convert(asymbp.models.build(key, 10, **kw), "uSF")


# ---- datasets download --mirror ---------------------------------------------------------------


@pytest.mark.parametrize("mirror", ["notaurl", "ftp://example.org/data", "C:\\data",
                                    "https://", "/srv/mirror"])
def test_mirror_must_be_a_url(tmp_path, capsys, mirror):
    one_line_error(capsys, ["datasets", "download", "mnist", "--mirror", mirror, "--data-dir",
                            str(tmp_path), "--no-progress"], "--mirror", "is not a URL",
                   "file://")
    assert not any(tmp_path.iterdir())  # nothing was created


def test_mirror_from_environment_must_be_a_url(tmp_path, monkeypatch):
    from asymbp.data.download import download

    monkeypatch.setenv("ASYMBP_MIRROR", "mirror.example.org")
    with pytest.raises(AsymbpError, match=r"\$ASYMBP_MIRROR 'mirror.example.org' is not a URL"):
        download("mnist", tmp_path, progress=False, log=lambda *_: None)


def test_file_mirror_is_a_url(tmp_path, monkeypatch, pin, write_mnist):
    from asymbp.data import download as dl

    write_mnist(tmp_path / "mirror" / "mnist")
    pin(monkeypatch, "mnist", tmp_path / "mirror" / "mnist", "sha256")
    paths = dl.download("mnist", tmp_path / "data", mirror=(tmp_path / "mirror").as_uri(),
                        progress=False, log=lambda *_: None)
    assert dl.status("mnist", tmp_path / "data")[0] == "ready" and len(paths) == 4


# ---- the roles of the config fields ------------------------------------------------------------


def test_roles_give_the_run_key_and_the_resume_rules():
    # One declaration per field (asymbp.config.option): what the run key leaves out and what a
    # checkpoint may differ in are derived from it, so the two lists cannot drift apart.
    from asymbp.config import NOT_IN_KEY, PER_RUN, RESUME_FREE

    assert set(NOT_IN_KEY) == {"device", "data_dir", "compile", "channels_last",
                               "eval_batch_size", "loader_workers"}
    assert set(RESUME_FREE) == set(NOT_IN_KEY) | {"alignment"}
    assert PER_RUN == ("dataset", "method", "lr_mult", "seed")
    base = {"dataset": "mnist5k", "method": "SGD", "lr_mult": 1.0, "seed": 1}
    other = {"device": "cpu", "data_dir": "/elsewhere", "compile": True, "channels_last": False,
             "eval_batch_size": 7, "loader_workers": 3}
    for name in NOT_IN_KEY:
        assert run_key("A", {**base, name: other[name]}) == run_key("A", base), name
    assert run_key("A", {**base, "alignment": False}) != run_key("A", base)  # recorded: in it


def test_names_typed_in_another_case_plan_the_same_runs():
    from asymbp.sweep import plan

    lower = plan(methods=["SGD"], datasets=["mnist1d"], lr_mults=[1], base={"model": "mlp"})
    upper = plan(methods=["SGD"], datasets=["MNIST1D"], lr_mults=[1], base={"model": "MLP"})
    assert [r.key for r in upper] == [r.key for r in lower]
    assert upper[0].config["dataset"] == "mnist1d" and upper[0].config["model"] == "mlp"
