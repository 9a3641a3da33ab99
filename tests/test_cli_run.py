"""`asymbp run`: one run from the command line, its JSON, its help, and its user errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from asymbp.cli import build_parser, main


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_mnist5k_sgd_one_epoch_under_15_percent(capsys):
    assert main(["run", "--dataset", "mnist5k", "--method", "SGD", "--epochs", "1",
                 "--threads", "1", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object, one line
    result = json.loads(out)
    assert {"test_error", "best_test_error", "diverged", "epochs"} <= set(result)
    assert result["diverged"] is False and len(result["epochs"]) == 1
    assert result["test_error"] < 15, result["test_error"]
    assert result["best_test_error"] <= result["test_error"]
    assert result["method"] == "SGD" and result["config"]["lr_mult"] == 1.0


@pytest.fixture
def blobs(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "blobs.npz"
    np.savez(path, x_train=rng.normal(size=(60, 5)).astype(np.float32),
             y_train=rng.integers(0, 2, 60), x_test=rng.normal(size=(20, 5)).astype(np.float32),
             y_test=rng.integers(0, 2, 20))
    return path


def test_epoch_lines_and_summary(blobs, capsys):
    assert main(["run", "--dataset", f"npz:{blobs}", "--method", "uSF+BN+BM", "--epochs", "2",
                 "--batch-size", "20", "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0].startswith("epoch   1") and "V-W" in out[0]
    assert out[-1].startswith("uSF+BN+BM on npz:") and "final test error" in out[-1]


def test_json_is_strict_json_when_diverged(blobs, capsys):
    assert main(["run", "--dataset", f"npz:{blobs}", "--lr-mult", "1e30", "--epochs", "2",
                 "--batch-size", "10", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # NaN is written as null
    assert result["diverged"] is True and result["diverged_epoch"] == 1
    assert len(result["epochs"]) == 1
    assert result["test_error"] is None and result["best_test_error"] is None


def test_checkpoint_option(blobs, tmp_path, capsys):
    ck = tmp_path / "sub" / "run.pt"
    args = ["run", "--dataset", f"npz:{blobs}", "--epochs", "2", "--threads", "1", "--json",
            "--checkpoint", str(ck)]
    assert main(args) == 0 and ck.exists()
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0  # resumes a finished run: same numbers
    again = json.loads(capsys.readouterr().out)
    assert [r["test_error"] for r in again["epochs"]] == [r["test_error"] for r in first["epochs"]]


def _bad_npz(tmp_path, kind):
    path = tmp_path / f"{kind}.npz"
    x, y = np.zeros((10, 4), np.float32), np.arange(10) % 2
    if kind == "missing":
        np.savez(path, x_train=x, y_train=y, x_test=x)
    elif kind == "lengths":
        np.savez(path, x_train=x, y_train=y[:9], x_test=x, y_test=y)
    elif kind == "test-lengths":
        np.savez(path, x_train=x, y_train=y, x_test=x[:4], y_test=y)
    elif kind == "shapes":
        np.savez(path, x_train=x, y_train=y, x_test=np.zeros((10, 5), np.float32), y_test=y)
    elif kind == "not-npz":
        path.write_text("hello")
    return path


BAD = [
    (["--method", "uSF+XX"], "XX"),
    (["--method", "quux"], "uSF"),
    (["--dataset", "imagenet22k"], "mnist5k"),
    (["--model", "vgg"], "resnet20"),
    (["--lr-mult", "0"], "multiplier"),
    (["--lr-mult", "-1"], "multiplier"),
    (["--lr-mult", "nan"], "multiplier"),
    (["--lr-mult", "abc"], "lr-mult"),
    (["--epochs", "0"], "epochs"),
    (["--batch-schedule", "100:x"], "schedule"),
    (["--freeze", "middle"], "freeze"),
    (["--method", "SGD@top", "--freeze", "bottom"], "freeze"),
    (["--threads", "0"], "threads"),
    (["--bn-stat-batches", "-1"], "BN"),
    (["--dataset", "npz:/nonexistent/file.npz"], "not found"),
    (["--no-such-option"], "unrecognized"),
]


def _check_one_line_error(capsys, argv, match, ck):
    status = main(["run", "--epochs", "1", "--threads", "1", "--checkpoint", str(ck), *argv])
    captured = capsys.readouterr()
    assert status == 2, argv
    assert captured.err.count("\n") == 1 and captured.err.startswith("asymbp: error: "), captured.err
    assert match in captured.err, (match, captured.err)
    assert captured.out == ""
    assert not ck.exists() and not ck.parent.exists()  # nothing written


@pytest.mark.parametrize("argv,match", BAD)
def test_bad_input_is_one_line_status_2_nothing_written(argv, match, tmp_path, capsys):
    _check_one_line_error(capsys, argv, match, tmp_path / "ck" / "run.pt")


@pytest.mark.parametrize("kind,match", [
    ("missing", "y_test"), ("lengths", "must match"), ("test-lengths", "must match"),
    ("shapes", "differ"), ("not-npz", "npz"),
])
@pytest.mark.parametrize("progress", [[], ["--json"]])
def test_bad_npz(kind, match, progress, tmp_path, capsys):
    path = _bad_npz(tmp_path, kind)
    _check_one_line_error(capsys, ["--dataset", f"npz:{path}", *progress], match,
                          tmp_path / "ck" / "run.pt")


def test_bad_input_in_a_subprocess(tmp_path):
    # the real entry point: one line on stderr, status 2, no traceback
    path = _bad_npz(tmp_path, "lengths")
    proc = subprocess.run([sys.executable, "-m", "asymbp", "run", "--dataset", f"npz:{path}",
                           "--epochs", "1", "--checkpoint", str(tmp_path / "run.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "run.pt").exists()


def _run_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["run"]


def test_help_explains_every_option(capsys):
    parser = _run_parser()
    for action in parser._actions:
        assert action.help and len(action.help) > 8, action.option_strings
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--dataset", "--method", "--lr-mult", "--epochs", "--json", "--checkpoint",
                   "--protocol", "--bn-stats", "--freeze", "--batch-schedule", "--model"):
        assert option in text
    assert "sum" in text  # the summed loss behind the printed learning rates


def test_methods_command_exists(capsys):
    assert main(["methods"]) == 0
    assert "brSF" in capsys.readouterr().out


# ---- the options are generated from TrainConfig's fields ---------------------------------------


def _sweep_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["sweep"]


def test_every_config_field_has_its_option_with_its_declared_help():
    from asymbp.config import FIELDS, PER_RUN

    run_dests = {a.dest: a for a in _run_parser()._actions}
    sweep_dests = {a.dest for a in _sweep_parser()._actions}
    for f in FIELDS:
        if f.name == "scheme_options":  # a dict: given by --scheme-option KEY=VALUE (repeatable)
            assert f.name not in run_dests and f.name not in sweep_dests
            continue
        action = run_dests[f.name]
        assert "--" + f.name.replace("_", "-") in action.option_strings
        assert action.help.startswith(f.metadata["help"][:20]), f.name
        if f.metadata["choices"]:
            assert tuple(action.choices) == f.metadata["choices"], f.name
        # a sweep sets dataset, method, lr_mult and seed per run (its plural options)
        assert (f.name in sweep_dests) == (f.name not in PER_RUN), f.name


def test_options_give_the_config_and_the_rebuilt_command_line_gives_it_again():
    from asymbp.cli.run import _argv_without_nproc, config_from_args

    parser = build_parser()
    argv = ["run", "--dataset", "mnist1d", "--method", "uSF+BN+BM", "--lr-mult", "0.1",
            "--seed", "7", "--epochs", "3", "--batch-schedule", "100:1,500", "--protocol",
            "honest", "--no-alignment", "--no-channels-last", "--compile", "--diverge-loss",
            "inf", "--eval-batch-size", "64", "--bn-stat-alpha", "0.1", "--base-lr", "1e-05",
            "--threads", "1", "--json", "--nproc", "2"]
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    assert cfg["alignment"] is False and cfg["channels_last"] is False and cfg["compile"] is True
    assert cfg["diverge_loss"] == float("inf") and cfg["eval_batch_size"] == 64
    assert cfg["lr_mult"] == 0.1 and cfg["seed"] == 7 and cfg["base_lr"] == 1e-5
    assert "model" not in cfg and "data_dir" not in cfg  # unset: the config's default
    again = parser.parse_args(_argv_without_nproc(args))
    assert config_from_args(again) == cfg
    assert again.threads == 1 and again.json and again.nproc is None
    mode = parser.parse_args(["run", "--compile", "max-autotune", "--alignment"])
    assert config_from_args(parser.parse_args(_argv_without_nproc(mode)))["compile"] == \
        "max-autotune"


def test_diverge_loss_option(blobs, capsys):
    # the field's option comes with the generator: a low bound stops the run in epoch 1
    assert main(["run", "--dataset", f"npz:{blobs}", "--epochs", "2", "--batch-size", "20",
                 "--threads", "1", "--json", "--diverge-loss", "1e-3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["diverged"] is True and result["diverged_epoch"] == 1
    assert result["config"]["diverge_loss"] == 1e-3
    assert main(["run", "--dataset", f"npz:{blobs}", "--epochs", "1", "--threads", "1",
                 "--diverge-loss", "0"]) == 2
    assert "diverge_loss must be > 0" in capsys.readouterr().err
