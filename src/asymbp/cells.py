"""Table cells from runs (DESIGN §6): one number per (dataset, method), mean ± std over seeds.

A cell's runs are its learning-rate multipliers × procedures × seeds. Per seed:

- **paper** protocol: the best test error over all epochs of the cell's runs (the paper
  validated on the test split);
- **honest** protocol: the run and epoch with the lowest error on a validation split held out
  of the training set pick the point, and the test error there is the value.

Diverged runs count for nothing; the cell is computed from the others (and is "diverged" only
when every run diverged).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .errors import AsymbpError

CELL_COLUMNS = ["experiment", "dataset", "method", "value", "std", "n_seeds", "n_runs",
                "n_finished", "n_diverged", "n_failed", "status"]


def _seed_value(runs: pd.DataFrame, protocol: str) -> float:
    """The cell's value for one seed from its finished, non-diverged runs."""
    if protocol == "paper":
        v = runs["best_test_error"].astype(float)
        return float(v.min()) if v.notna().any() else math.nan
    picked = runs.dropna(subset=["val_error"])
    if picked.empty:
        return math.nan
    # Ties on validation error go to the lower test error's run order: the first in the table.
    best = picked.loc[picked["val_error"].astype(float).idxmin()]
    return float(best["honest_test_error"])


def cell_values(runs_df: pd.DataFrame, protocol: str = "paper",
                experiment: str | None = None) -> pd.DataFrame:
    """Cell values from `asymbp.store.load(db)`.

    Arguments:
        runs_df: one row per run (the columns of `store.load`).
        protocol: "paper" or "honest" (see the module docstring).
        experiment: keep only this experiment's runs (default: all, one row per experiment).

    Returns:
        One row per (experiment, dataset, method): `value` (mean over seeds, %), `std` (sample
        std over seeds; NaN with one seed), `n_seeds` (seeds with a value), `n_runs`,
        `n_finished`, `n_diverged`, `n_failed`, `status`: "ok"; "diverged" when every run
        diverged; "partial" when some runs are unfinished but some have finished; "missing" when
        none has finished.
    """
    if protocol not in ("paper", "honest"):
        raise AsymbpError(f"unknown protocol {protocol!r}; valid: paper, honest")
    df = runs_df
    if "experiment" not in df:
        df = df.assign(experiment="")
    if experiment is not None:
        df = df[df["experiment"] == experiment]
    if protocol == "honest" and len(df) and "val_error" not in df:
        raise AsymbpError("the honest protocol needs val_error: run the sweep with "
                          "--protocol honest")
    rows = []
    for (exp, dataset, method), cell in df.groupby(["experiment", "dataset", "method"],
                                                   sort=False):
        status = cell["status"]
        ok = cell[status == "done"]
        n_fin = int(status.isin(["done", "diverged"]).sum())
        n_div = int((status == "diverged").sum())
        per_seed = [_seed_value(r, protocol) for _, r in ok.groupby("seed")]
        per_seed = [v for v in per_seed if math.isfinite(v)]
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
