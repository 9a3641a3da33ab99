"""`--scheme-option KEY=VALUE` on `asymbp run` and `asymbp sweep`: the feedback scheme's options
from the command line, stored in the run's config and in its run key only when given."""

import json
import sqlite3

import numpy as np
import pytest

from asymbp.cli import build_parser, main
from asymbp.cli.run import _argv_without_nproc, config_from_args
from asymbp.cli.sweep import plan_from_args
from asymbp.sweep.plan import run_key

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def blobs(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "blobs.npz"
    np.savez(path, x_train=rng.normal(size=(40, 5)).astype(np.float32),
             y_train=rng.integers(0, 2, 40), x_test=rng.normal(size=(20, 5)).astype(np.float32),
             y_test=rng.integers(0, 2, 20))
    return path


def test_run_stores_the_options_in_its_config(blobs, capsys):
    assert main(["run", "--dataset", f"npz:{blobs}", "--method", "uSF", "--epochs", "1",
                 "--batch-size", "20", "--scheme-option", "scale=xavier", "--scheme-option",
                 "density=0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # parse_options' typing: a number becomes a number, other text stays text
    assert result["config"]["scheme_options"] == {"scale": "xavier", "density": 0.5}


def test_the_options_change_the_run_key_only_when_given():
    parser = build_parser()
    plain = config_from_args(parser.parse_args(["run", "--method", "uSF"]))
    given = config_from_args(parser.parse_args(["run", "--method", "uSF", "--scheme-option",
                                                "scale=xavier"]))
    assert "scheme_options" not in plain and given["scheme_options"] == {"scale": "xavier"}
    # not given: the key of a run made before the flag existed (scheme_options at its default)
    assert run_key("grid", plain) == run_key("grid", {**plain, "scheme_options": {}})
    assert run_key("grid", plain) != run_key("grid", given)


def test_nproc_command_line_keeps_the_options():
    parser = build_parser()
    args = parser.parse_args(["run", "--method", "frSF", "--scheme-option", "density=0.25",
                              "--scheme-option", "magnitude=xavier", "--nproc", "2"])
    again = parser.parse_args(_argv_without_nproc(args))
    assert config_from_args(again)["scheme_options"] == {"density": 0.25, "magnitude": "xavier"}


@pytest.mark.parametrize("option,match", [
    ("foo=1", "scheme uSF takes no option foo; its options: "),
    ("scale", "is not KEY=VALUE"),
    ("=3", "is not KEY=VALUE"),
    ("scale=bogus", "scale='bogus'"),
])
def test_bad_options_are_one_line_status_2(option, match, blobs, tmp_path, capsys):
    db = tmp_path / "s.db"
    for argv in (["run", "--dataset", f"npz:{blobs}", "--method", "uSF", "--epochs", "1"],
                 ["sweep", "--methods", "uSF", "--datasets", f"npz:{blobs}", "--epochs", "1",
                  "--lr-mults", "1", "--db", str(db), "--no-progress"]):
        status = main([*argv, "--scheme-option", option])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and err.startswith("asymbp: error: "), err
        assert match in err, err
    assert not db.exists()  # nothing written


def test_sweep_stores_them_and_adds_them_to_an_experiments_columns(blobs, tmp_path, capsys):
    db = tmp_path / "s.db"
    assert main(["sweep", "--methods", "uSF,frSF", "--datasets", f"npz:{blobs}", "--epochs", "1",
                 "--batch-size", "20", "--lr-mults", "1", "--db", str(db), "--workers", "1",
                 "--no-progress", "--scheme-option", "density=0.5"]) == 0
    capsys.readouterr()
    with sqlite3.connect(db) as c:
        configs = [json.loads(r[0]) for r in c.execute("select config from runs")]
    assert len(configs) == 2
    assert all(cfg["scheme_options"] == {"density": 0.5} for cfg in configs)
    # BioTorch's uSF column has scale=xavier: a given option joins it (and a key already there
    # is the command line's)
    args = build_parser().parse_args(["sweep", "--experiment", "biotorch-cifar10", "--methods",
                                      "uSF", "--datasets", "LeNet SGD", "--scheme-option",
                                      "density=0.3"])
    (run,) = plan_from_args(args)
    assert run.config["scheme_options"] == {"scale": "xavier", "density": 0.3}
