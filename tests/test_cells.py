"""Cell values (asymbp.report.cells): the paper and honest protocols on hand-made runs."""

import math

import pandas as pd
import pytest

from asymbp.config import PROTOCOLS
from asymbp.errors import AsymbpError
from asymbp.report import table
from asymbp.report.cells import PICK_BY, VALUE_OF, cell_run, cell_values


def runs(*rows):
    cols = ["experiment", "dataset", "method", "lr_mult", "seed", "status", "best_test_error",
            "val_error", "honest_test_error"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


NAN = math.nan


def test_paper_protocol_is_best_over_multipliers_then_mean_over_seeds():
    df = runs(("A", "d", "SGD", 10, 1, "done", 5.0, NAN, NAN),
              ("A", "d", "SGD", 1, 1, "done", 3.0, NAN, NAN),
              ("A", "d", "SGD", 10, 2, "done", 4.0, NAN, NAN),
              ("A", "d", "SGD", 1, 2, "done", 6.0, NAN, NAN))
    c = cell_values(df).iloc[0]
    assert c.value == pytest.approx((3.0 + 4.0) / 2)
    assert c["std"] == pytest.approx(pd.Series([3.0, 4.0]).std())
    assert (c.n_seeds, c.n_runs, c.status) == (2, 4, "ok")


def test_honest_protocol_takes_the_test_error_where_validation_is_lowest():
    # k=10 has the better test error but k=1 the better validation error: honest picks k=1
    df = runs(("A", "d", "BM", 10, 1, "done", 1.0, 9.0, 2.0),
              ("A", "d", "BM", 1, 1, "done", 2.0, 4.0, 7.0))
    assert cell_values(df, "paper").value[0] == 1.0
    assert cell_values(df, "honest").value[0] == 7.0


def test_diverged_runs_count_for_nothing_but_the_cell_computes():
    df = runs(("A", "d", "uSF", 100, 1, "diverged", 0.5, NAN, NAN),
              ("A", "d", "uSF", 1, 1, "done", 8.0, NAN, NAN),
              ("A", "d", "BM", 100, 1, "diverged", NAN, NAN, NAN),
              ("A", "d", "BM", 1, 1, "diverged", NAN, NAN, NAN))
    c = cell_values(df).set_index("method")
    assert c.loc["uSF", "value"] == 8.0 and c.loc["uSF", "status"] == "ok"
    assert c.loc["uSF", "n_diverged"] == 1
    assert math.isnan(c.loc["BM", "value"]) and c.loc["BM", "status"] == "diverged"
    assert table(df, "A").loc["d", "BM"] == "diverged"


def test_unfinished_cells_are_partial_or_missing():
    df = runs(("A", "d", "SGD", 10, 1, "done", 5.0, NAN, NAN),
              ("A", "d", "SGD", 1, 1, "running", NAN, NAN, NAN),
              ("A", "d", "BN", 10, 1, "pending", NAN, NAN, NAN),
              ("A", "d", "BN", 1, 1, "failed", NAN, NAN, NAN))
    c = cell_values(df).set_index("method")
    assert c.loc["SGD", "status"] == "partial" and c.loc["SGD", "value"] == 5.0
    assert c.loc["BN", "status"] == "missing" and c.loc["BN", "n_failed"] == 1
    assert table(df, "A").loc["d", "BN"] == "—"


def test_experiments_are_separate_cells_and_can_be_selected():
    df = runs(("A", "d", "SGD", 1, 1, "done", 5.0, NAN, NAN),
              ("C1", "d", "SGD", 1, 1, "done", 6.0, NAN, NAN))
    assert len(cell_values(df)) == 2
    only = cell_values(df, experiment="C1")
    assert list(only.value) == [6.0] and list(only.experiment) == ["C1"]


def test_unknown_protocol_is_a_user_error():
    with pytest.raises(AsymbpError):
        cell_values(runs(), protocol="best")


def keyed(*rows):
    df = runs(*rows)
    return df.assign(run_key=[f"r{i}" for i in range(len(df))])


def test_the_run_behind_a_cell_is_the_one_its_protocol_picks():
    # r0 has the best test error, r1 the best validation error, r2 diverged before it got worse
    df = keyed(("A", "d", "BM", 10, 1, "done", 1.0, 9.0, 2.0),
               ("A", "d", "BM", 1, 1, "done", 2.0, 4.0, 7.0),
               ("A", "d", "BM", 100, 1, "diverged", 0.5, 1.0, 0.5),
               ("A", "d", "BM", 1, 2, "done", 3.0, 8.0, 3.5))
    assert cell_run(df, "d", "BM", "paper") == "r0"
    assert cell_run(df, "d", "BM", "honest") == "r1"  # the diverged r2 counts for nothing
    assert cell_run(df, "d", "BM", "paper", keys=["r1", "r3"]) == "r1"
    assert cell_run(df, "d", "SGD", "paper") is None
    for protocol in ("paper", "honest"):  # per seed, the same rule gives the cell's value
        seed1 = df[df["seed"] == 1]
        picked = seed1.set_index("run_key").loc[cell_run(seed1, "d", "BM", protocol)]
        column = {"paper": "best_test_error", "honest": "honest_test_error"}[protocol]
        assert cell_values(seed1, protocol).value[0] == picked[column]
    with pytest.raises(AsymbpError, match="unknown protocol 'best'"):
        cell_run(df, "d", "BM", "best")
    assert set(PICK_BY) == set(VALUE_OF) == set(PROTOCOLS)  # every protocol says how it picks
