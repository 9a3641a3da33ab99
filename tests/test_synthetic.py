"""`--synthetic`: random data of a dataset's shapes and sizes, so a run or a whole sweep is
smoke-tested and timed without the data."""

import sqlite3

import numpy as np
import pytest

from asymbp import data
from asymbp import feedback as fb
from asymbp.cli import main
from asymbp.data.synthetic import SHAPES
from asymbp.errors import AsymbpError
from asymbp.sweep.plan import run_key

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes_sizes_and_seeds():
    ds = data.load("cifar10", synthetic=100, seed=3)
    assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (100, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() < 1
    assert set(np.unique(ds.y_train)) <= set(range(10)) and ds.model == "cifar"
    again = data.load("cifar10", synthetic=100, seed=3)
    assert np.array_equal(ds.x_train, again.x_train) and np.array_equal(ds.y_test, again.y_test)
    other = data.load("cifar10", synthetic=100, seed=4)
    assert not np.array_equal(ds.x_train, other.x_train)
    m, f = data.load("mnist", synthetic=50), data.load("fashion-mnist", synthetic=50)
    assert m.x_train.shape == (50, 1, 28, 28) and not np.array_equal(m.x_train, f.x_train)
    data.validate(m)
    # the table is the published sizes; a size above them is capped
    assert SHAPES["mnist"][:2] == (60_000, 10_000) and SHAPES["cifar10"][:2] == (50_000, 10_000)
    assert SHAPES["fashion-mnist"] == SHAPES["mnist"]
    assert len(data.load("mnist", synthetic=20_000).x_test) == 10_000


def test_unknown_shape_is_one_line():
    with pytest.raises(AsymbpError, match="no synthetic shape for dataset 'mnist5k'"):
        data.load("mnist5k", synthetic=10)


def test_a_synthetic_run_has_its_own_run_key():
    real = {"dataset": "mnist", "method": "SGD"}
    assert run_key("grid", real) != run_key("grid", {**real, "synthetic": 100})
    assert run_key("grid", real) == run_key("grid", {**real, "synthetic": None})


def test_run_and_grid_sweep_from_the_command_line(tmp_path, capsys):
    assert main(["run", "--dataset", "cifar10", "--synthetic", "60", "--model", "mlp",
                 "--epochs", "1", "--no-progress", "--json", "--data-dir",
                 str(tmp_path / "none")]) == 0, capsys.readouterr().err
    assert '"synthetic": 60' in capsys.readouterr().out
    db = tmp_path / "g.db"
    assert main(["sweep", "--methods", "SGD,uSF", "--datasets", "mnist", "--synthetic", "60",
                 "--model", "mlp", "--epochs", "1", "--lr-mults", "1", "--db", str(db),
                 "--workers", "1", "--no-progress", "--data-dir", str(tmp_path / "none")]) == 0
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*) from runs").fetchone()[0] == 2


@pytest.mark.skipif("scale" not in fb.resolve("uSF")[0].options(),
                    reason="BioTorch's scheme options (branch w15) not here")
def test_biotorch_mnist_experiment_smoke(tmp_path, capsys):
    db = tmp_path / "b.db"
    code = main(["sweep", "--experiment", "biotorch-mnist", "--synthetic", "64", "--epochs", "1",
                 "--db", str(db), "--workers", "1", "--no-progress",
                 "--data-dir", str(tmp_path / "none")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "12 runs: 12 done" in out.out + out.err
    assert "| fashion-mnist |" in out.out


def test_a_synthetic_set_keeps_the_protocols_validation_share():
    # BioTorch's CIFAR-10 split is 5 000 of 50 000: with --synthetic 600 it is 60 of 600, so a
    # smoke test of biotorch-cifar10 runs; real data keeps val_size as given.
    from asymbp.train import honest_split, TrainConfig

    cfg = TrainConfig(dataset="cifar10", protocol="honest", val_size=5000, synthetic=600)
    val, tr = honest_split(cfg, data.load("cifar10", synthetic=600))
    assert (len(val), len(tr)) == (60, 540)
    assert data.synthetic_train_size(data.load("cifar10", synthetic=600)) == 50_000
    real = data.load("mnist5k")
    assert data.synthetic_train_size(real) is None
    cfg = TrainConfig(dataset="mnist5k", protocol="honest", val_size=500)
    assert len(honest_split(cfg, real)[0]) == 500
