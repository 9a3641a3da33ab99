"""Table cells from runs (DESIGN §6): one number per (dataset, method), mean ± std over seeds,
and the run that stands behind each cell.

A cell's runs are its learning-rate multipliers × procedures × seeds. Per seed:

- **paper** protocol: the best test error over all epochs of the cell's runs (the paper
  validated on the test split);
- **honest** protocol: the run and epoch with the lowest error on a validation split held out
  of the training set pick the point, and the test error there is the value.

Diverged runs count for nothing; the cell is computed from the others (and is "diverged" only
when every run diverged).

One rule, `pick_run`, says which run a protocol picks: per seed for the cell's value
(`cell_values`), across the seeds for the run a figure shows for the cell (`cell_run`), so a
table and its figures never disagree on which run is behind a cell.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..config import PROTOCOLS
from ..errors import AsymbpError, unknown

CELL_COLUMNS = ["experiment", "dataset", "method", "value", "std", "n_seeds", "n_runs",
                "n_finished", "n_diverged", "n_failed", "status"]
SEED_COLUMNS = ["experiment", "dataset", "method", "seed", "value", "run_key"]
STATS_COLUMNS = ["experiment", "dataset", "method", "mean", "std", "n"]
# The number a cell shows per seed: the protocol's (best or honest test error of the picked
# run), or the picked run's final test error (Li & Benna's density figure: the last epoch).
NUMBERS = ("protocol", "final")


# The run column a protocol picks a run by (the lowest wins), and the run's number it reports.
PICK_BY = {"paper": "best_test_error", "honest": "val_error"}
VALUE_OF = {"paper": "best_test_error", "honest": "honest_test_error"}


def check_protocol(protocol: str, runs: pd.DataFrame | None = None) -> None:
    """The one-line error for an unknown protocol, or for the honest one on runs without a
    validation split."""
    if protocol not in PROTOCOLS:
        raise unknown("protocol", protocol, PROTOCOLS)
    if protocol == "honest" and runs is not None and len(runs) and "val_error" not in runs:
        raise AsymbpError("the honest protocol needs val_error: run the sweep with "
                          "--protocol honest")


def pick_run(runs: pd.DataFrame, protocol: str) -> pd.Series | None:
    """The run among `runs` (finished, not diverged) that `protocol` picks: the lowest best test
    error (paper) or the lowest validation error (honest); None when no run has that number.

    Ties go to the first of them in the table (the test error never breaks a validation tie).
    """
    by = runs[PICK_BY[protocol]].to_numpy(dtype=float)
    if np.isnan(by).all():
        return None
    return runs.iloc[int(np.nanargmin(by))]


def seed_values(runs_df: pd.DataFrame, protocol: str = "paper", experiment: str | None = None,
                number: str = "protocol") -> pd.DataFrame:
    """One row per (experiment, dataset, method, seed) with a value: the number of the run that
    `pick_run` picks among the seed's finished, non-diverged runs (`number`: "protocol", the
    protocol's test error, as the tables; "final", that run's last-epoch test error), and its
    run_key. Seeds whose runs all diverged or are unfinished have no row."""
    if number not in NUMBERS:
        raise unknown("cell number", number, NUMBERS)
    df = runs_df if "experiment" in runs_df else runs_df.assign(experiment="")
    if experiment is not None:
        df = df[df["experiment"] == experiment]
    check_protocol(protocol, df)
    column = VALUE_OF[protocol] if number == "protocol" else "test_error"
    rows = []
    ok = df[df["status"] == "done"]
    for (exp, dataset, method, seed), runs in ok.groupby(
            ["experiment", "dataset", "method", "seed"], sort=False):
        best = pick_run(runs, protocol)
        v = math.nan if best is None else float(best[column])
        if math.isfinite(v):
            rows.append({"experiment": exp, "dataset": dataset, "method": method,
                         "seed": int(seed), "value": v, "run_key": best.get("run_key")})
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


def cell_stats(runs_df: pd.DataFrame, protocol: str = "paper", experiment: str | None = None,
               number: str = "protocol") -> pd.DataFrame:
    """Mean ± std over seeds per cell with a value (`cell_values`' numbers): columns
    experiment, dataset, method, mean, std (the sample std, ddof=1; NaN for one seed), n (the
    seeds with a value)."""
    cells = cell_values(runs_df, protocol, experiment, number)
    cells = cells[cells["n_seeds"] > 0].rename(columns={"value": "mean", "n_seeds": "n"})
    return cells[STATS_COLUMNS].reset_index(drop=True)


def cell_run(runs: pd.DataFrame, dataset: str, method: str, protocol: str = "paper",
             keys=None) -> str | None:
    """The run behind the cell (`dataset`, `method`) of one experiment's `runs`: the one
    `pick_run` picks among the cell's finished, non-diverged runs of every seed (among `keys`
    when given, e.g. the runs with alignment data); None when there is none."""
    check_protocol(protocol, runs)
    cell = runs[(runs["dataset"] == dataset) & (runs["method"] == method)
                & (runs["status"] == "done")]
    if keys is not None:
        cell = cell[cell["run_key"].isin(set(keys))]
    best = pick_run(cell, protocol)
    return None if best is None else best["run_key"]


def cell_values(runs_df: pd.DataFrame, protocol: str = "paper",
                experiment: str | None = None, number: str = "protocol") -> pd.DataFrame:
    """Cell values from `asymbp.store.load(db)`, each from the runs `pick_run` picks per seed.

    Arguments:
        runs_df: one row per run (the columns of `store.load`).
        protocol: "paper" or "honest" (see the module docstring).
        experiment: keep only this experiment's runs (default: all, one row per experiment).
        number: each seed's number, as `seed_values` (the protocol's, or the final epoch's).

    Returns:
        One row per (experiment, dataset, method): `value` (mean over seeds, %), `std` (sample
        std over seeds; NaN with one seed), `n_seeds` (seeds with a value), `n_runs`,
        `n_finished`, `n_diverged`, `n_failed`, `status`: "ok"; "diverged" when every run
        diverged; "partial" when some runs are unfinished but some have finished; "missing" when
        none has finished.
    """
    df = runs_df
    if "experiment" not in df:
        df = df.assign(experiment="")
    if experiment is not None:
        df = df[df["experiment"] == experiment]
    values: dict[tuple, list[float]] = {}  # (experiment, dataset, method) -> one per seed
    for r in seed_values(df, protocol, number=number).itertuples(index=False):
        values.setdefault((r.experiment, r.dataset, r.method), []).append(r.value)
    rows = []
    for (exp, dataset, method), cell in df.groupby(["experiment", "dataset", "method"],
                                                   sort=False):
        status = cell["status"]
        n_fin = int(status.isin(["done", "diverged"]).sum())
        n_div = int((status == "diverged").sum())
        per_seed = values.get((exp, dataset, method), [])
        value = float(np.mean(per_seed)) if per_seed else math.nan
        std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan
        if n_fin < len(cell):
            state = "partial" if n_fin else "missing"
        elif n_div == len(cell):
            state = "diverged"
        else:
            state = "ok"
        rows.append({"experiment": exp, "dataset": dataset, "method": method, "value": value,
                     "std": std, "n_seeds": len(per_seed), "n_runs": len(cell),
                     "n_finished": n_fin, "n_diverged": n_div,
                     "n_failed": int((status == "failed").sum()), "status": state})
    return pd.DataFrame(rows, columns=CELL_COLUMNS)
