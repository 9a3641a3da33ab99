"""Bad datasets (#12): each is one line and exit status 2, never a traceback or a result that
looks fine (0.00 % error on no test examples, NaN inputs read as divergence); and the inputs a
researcher would expect to work (N×H×W×C images, N×1 labels, whole-number float labels) do.

Real .npz files in tmp_path, loaded through `asymbp.data.load` and `asymbp run`.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from asymbp.cli import main
from asymbp.data import Dataset, load, validate
from asymbp.errors import AsymbpError
from asymbp.train import TrainConfig, check_config, error_rate, summarize, train


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def good(n=10, d=4):
    return {"x_train": np.zeros((n, d), np.float32), "y_train": np.arange(n) % 2,
            "x_test": np.zeros((n, d), np.float32), "y_test": np.arange(n) % 2}


def nonfinite(a, k=2):
    a = a.copy()
    a.flat[:k] = [np.nan, np.inf][:k]
    return a


def with_(**arrays):
    return {**good(), **arrays}


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


_X = good()["x_train"]
BAD = {  # name: (arrays, or a writer of the file; what the message must say)
    "zero-byte": (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    "npy-renamed": (lambda p: p.write_bytes(_npy_bytes(_X)), "single .npy array"),
    "text": (lambda p: p.write_text("hello"), "not a readable .npz"),
    "missing-key": ({k: v for k, v in good().items() if k != "y_test"}, "missing array(s) y_test"),
    "all-empty": ({"x_train": np.zeros((0, 4)), "y_train": np.zeros(0, int),
                   "x_test": np.zeros((0, 4)), "y_test": np.zeros(0, int)},
                  "x_train has no examples"),
    "empty-train": (with_(x_train=_X[:0], y_train=np.zeros(0, int)), "x_train has no examples"),
    "empty-test": (with_(x_test=_X[:0], y_test=np.zeros(0, int)), "x_test has no examples"),
    "nan-train": (with_(x_train=nonfinite(_X)), "x_train has 2 non-finite"),
    "nan-test": (with_(x_test=nonfinite(_X, 1)), "x_test has 1 non-finite"),
    "nan-images": (with_(x_train=nonfinite(np.zeros((10, 1, 4, 4)), 2),
                         x_test=np.zeros((10, 1, 4, 4))), "x_train has 2 non-finite"),
    "complex": (with_(x_train=_X + 1j), "x_train is complex"),
    "strings": (with_(x_test=np.full((10, 4), "a")), "x_test must be numeric"),
    "x-1d": (with_(x_train=np.zeros(10)), "x_train has shape (10,)"),
    "no-features": (with_(x_train=np.zeros((10, 0)), x_test=np.zeros((10, 0))),
                    "at least one value"),
    "fractional-labels": (with_(y_train=np.arange(10) % 2 + 0.5), "not whole numbers"),
    "nan-labels": (with_(y_test=np.where(np.arange(10) < 3, np.nan, 1.0)), "3 value(s)"),
    "string-labels": (with_(y_train=np.array(["a", "b"] * 5)), "integer class labels"),
    "one-hot-labels": (with_(y_train=np.eye(2)[np.arange(10) % 2]), "argmax"),
    "labels-3d": (with_(y_test=np.zeros((10, 1, 1), int)), "shape (10, 1, 1)"),
    "train-count": (with_(y_train=np.arange(9) % 2), "x_train has 10 rows but y_train has 9"),
    "test-count": (with_(x_test=_X[:4]), "x_test has 4 rows but y_test has 10"),
    "shapes": (with_(x_test=np.zeros((10, 5), np.float32)), "differ in shape"),
    "image-shapes": (with_(x_train=np.zeros((10, 1, 4, 4)), x_test=np.zeros((10, 1, 5, 4))),
                     "differ in shape"),
}


def write(path, spec):
    if callable(spec):
        spec(path)
    else:
        np.savez(path, **spec)
    return path


def one_line_cli_error(capsys, argv):
    status = main(["run", "--epochs", "1", "--no-progress", *argv])
    captured = capsys.readouterr()
    assert status == 2, captured
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("asymbp: error: "), captured.err
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize("name", list(BAD))
def test_bad_npz_load_is_one_line(name, tmp_path):
    spec, match = BAD[name]
    path = write(tmp_path / f"{name}.npz", spec)
    with pytest.raises(AsymbpError) as err:
        load(f"npz:{path}")
    msg = str(err.value)
    assert "\n" not in msg and match in msg, msg
    assert path.name in msg  # names the file


@pytest.mark.parametrize("name", list(BAD))
def test_bad_npz_run_is_status_2(name, tmp_path, capsys):
    spec, match = BAD[name]
    path = write(tmp_path / f"{name}.npz", spec)
    err = one_line_cli_error(capsys, ["--dataset", f"npz:{path}"])
    assert match in err and path.name in err, err


def test_honest_split_that_leaves_nothing_to_train_on(tmp_path, capsys):
    path = write(tmp_path / "one.npz", with_(x_train=_X[:1], y_train=np.array([0])))
    err = one_line_cli_error(capsys, ["--dataset", f"npz:{path}", "--protocol", "honest"])
    assert "leaving none to train on" in err and "--val-fraction" in err


# --- what a researcher would expect to work ---------------------------------------------------

def test_channels_last_images_are_transposed(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 7, 3), dtype=np.uint8)  # N×H×W×C, as Keras and PIL give
    np.savez(tmp_path / "nhwc.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2],
             y_test=np.array([0, 1]))
    ds = load(f"npz:{tmp_path / 'nhwc.npz'}")
    assert ds.x_train.shape == (6, 3, 8, 7) and ds.x_train.flags.c_contiguous
    np.testing.assert_allclose(ds.x_train, x.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    assert ds.x_train.dtype == np.float32


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 1, 8, 3), (4, 3, 5, 3), (4, 8, 8, 5)])
def test_channels_first_and_ambiguous_images_are_left_alone(tmp_path, shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(4) % 2, x_test=x,
             y_test=np.arange(4) % 2)
    ds = load(f"npz:{tmp_path / 'd.npz'}")
    assert ds.x_train.shape == shape and np.array_equal(ds.x_train, x)


def test_channels_last_images_train(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 28, 28, 3), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", x_train=x, y_train=np.arange(8) % 2, x_test=x[:4],
             y_test=np.arange(4) % 2)
    assert main(["run", "--dataset", f"npz:{tmp_path / 'nhwc.npz'}", "--epochs", "1",
                 "--no-progress", "--threads", "1", "--batch-size", "4"]) == 0
    assert "final test error" in capsys.readouterr().out


@pytest.mark.parametrize("y_train,y_test,expect_train,expect_test", [
    (np.array([[1], [0], [1], [0]]), np.array([[0], [1]]), [1, 0, 1, 0], [0, 1]),  # N×1 (Keras)
    (np.array([2.0, 0.0, 2.0, 0.0]), np.array([0.0, 2.0]), [1, 0, 1, 0], [0, 1]),  # whole floats
    (np.array([-1, 1, -1, 1]), np.array([1, -1]), [0, 1, 0, 1], [1, 0]),  # negative: sorted map
    (np.array([7, 3, 7, 3], np.uint8), np.array([3, 7], np.uint8), [1, 0, 1, 0], [0, 1]),
])
def test_labels_mapped_to_class_indices(tmp_path, y_train, y_test, expect_train, expect_test):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 3)), y_train=y_train,
             x_test=np.zeros((2, 3)), y_test=y_test)
    ds = load(f"npz:{tmp_path / 'd.npz'}")
    assert ds.y_train.tolist() == expect_train and ds.y_test.tolist() == expect_test
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 2


# --- the same checks for every loader and for a Dataset handed to train() ---------------------

def test_other_loaders_get_the_checks(tmp_path):
    (tmp_path / "timit80").mkdir()
    y = np.repeat(np.arange(80), 500)
    x = np.zeros((len(y), 3), np.float32)
    x[5, 1] = np.nan
    np.savez(tmp_path / "timit80" / "timit80.npz", x=x, y=y)
    with pytest.raises(AsymbpError, match=r"dataset timit80: x_(train|test) has 1 non-finite"):
        load("timit80", tmp_path, seed=1)


def _ds(**arrays):
    a = {**good(), **arrays}
    return Dataset("mine", a["x_train"], a["y_train"], a["x_test"], a["y_test"], 2, "mlp")


@pytest.mark.parametrize("arrays,match", [
    ({"x_train": nonfinite(_X)}, "x_train has 2 non-finite"),
    ({"x_test": _X[:0], "y_test": np.zeros(0, np.int64)}, "x_test has no examples"),
    ({"y_train": np.arange(10) % 3}, "outside 0..1"),
    ({"y_test": np.arange(10) - 1}, "outside 0..1"),
    ({"y_train": np.arange(10) % 2 * 1.0}, "integer class indices"),
    ({"x_test": _X.astype(np.complex64)}, "real numbers"),
])
def test_a_dataset_given_to_train_is_checked(arrays, match):
    with pytest.raises(AsymbpError, match=match):
        train({"dataset": "mnist5k", "method": "SGD", "epochs": 1}, data=_ds(**arrays))


def test_finiteness_check_is_exact_when_the_sum_overflows():
    huge = np.full((10, 4), 3e38, np.float32)  # finite, but the float32 sum overflows
    validate(_ds(x_train=huge))
    huge[3, 2] = -np.inf
    huge[4, 0] = np.nan
    with pytest.raises(AsymbpError, match="x_train has 2 non-finite"):
        validate(_ds(x_train=huge))


# --- no examples is not 0 % error -------------------------------------------------------------

def test_error_rate_of_no_examples_is_nan_and_summarize_keeps_it():
    model = nn.Linear(4, 2)
    x, y = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    assert math.isnan(error_rate(model, x, y, 10, contextlib.nullcontext))
    cfg = TrainConfig(method="SGD")
    history = [{"epoch": 1, "test_error": math.nan, "val_error": math.nan}]
    out = summarize(cfg, check_config(cfg), history, None, 0.0)
    assert math.isnan(out["test_error"]) and math.isnan(out["best_test_error"])
    assert out["best_epoch"] is None and "val_error" not in out and not out["diverged"]
