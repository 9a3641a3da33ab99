"""The figures a reader of the results wants, from the results database's DataFrames.

Every function takes DataFrames (`asymbp.store.load`, `load_epochs`, `load_alignment`, or a
`report.table`) and returns a matplotlib Figure; a figure of cells takes the table's protocol
and shows the runs `asymbp.report.cells` puts behind them; `save(fig, stem)` writes `stem.png` and
`stem.svg`. Colours are Okabe–Ito (safe for colour-blind readers) and every line also differs
in style and marker, so the figures read in greyscale print.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import paper as P  # noqa: E402
from .cells import cell_run, cell_values  # noqa: E402
from .tables import paper_row  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": distinguishable under every common colour
# vision deficiency.
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
             "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
GREY = "#777777"

plt.rcParams.update({
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
    "lines.linewidth": 1.6, "lines.markersize": 4.5, "axes.grid": True, "grid.alpha": 0.3,
    "savefig.bbox": "tight", "svg.fonttype": "none",
})


def style(i: int) -> dict:
    """The i-th line's colour, marker and line style (all three differ between neighbours)."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def save(fig, stem: str | os.PathLike, dpi: int = 150) -> list[Path]:
    """Write `stem.png` and `stem.svg`; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=dpi)
    return paths


def png_bytes(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _grid(n: int, ncols: int = 4, w: float = 2.6, h: float = 2.2, sharey=True):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols + 0.6, h * nrows + 0.6),
                             squeeze=False, sharey=sharey, sharex=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _epoch_axis(ax, epochs) -> None:
    """Whole epochs on the x axis, with room around a single one."""
    n = int(pd.Series(epochs).max()) if len(epochs) else 1
    ax.set_xlim(0.5, n + 0.5)
    ax.xaxis.set_major_locator(matplotlib.ticker.MultipleLocator(max(1, math.ceil(n / 6))))


def _yerr(std):
    """Error bars (std over seeds) only where there are several seeds."""
    std = np.asarray(std, dtype=float)
    return np.nan_to_num(std) if np.isfinite(std).any() else None


def _mult_label(k: float) -> str:
    return f"k = {k:g}"


# ---- learning curves ----------------------------------------------------------------------

def learning_curves(epochs: pd.DataFrame, dataset: str, method: str, ax=None,
                    legend: bool = True):
    """Test (solid) and training (dashed) error per epoch of one cell, one colour and marker
    per learning-rate multiplier (seeds averaged). A cell's extra procedure (Table 2's uSF+BM
    batch schedule) is drawn dotted, test error only."""
    cell = epochs[(epochs["dataset"] == dataset) & (epochs["method"] == method)]
    if "procedure" not in cell:
        cell = cell.assign(procedure="")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
    mults = sorted(cell["lr_mult"].unique(), reverse=True)
    extra = False
    for i, k in enumerate(mults):
        s = style(i)
        at_k = cell[cell["lr_mult"] == k]
        for proc, runs in at_k.groupby(at_k["procedure"].fillna(""), sort=True):
            c = runs.groupby("epoch")[["test_error", "train_error"]].mean()
            if proc:
                extra = True
                ax.plot(c.index, c["test_error"], color=s["color"], marker="x", linestyle=":",
                        label=f"{_mult_label(k)}, {proc}")
                continue
            ax.plot(c.index, c["test_error"], color=s["color"], marker=s["marker"],
                    linestyle="-", label=_mult_label(k))
            ax.plot(c.index, c["train_error"], color=s["color"], marker=s["marker"],
                    linestyle="--", markerfacecolor="none", alpha=0.8)
    ax.set_title(method)
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    _epoch_axis(ax, cell["epoch"])
    if (legend or extra) and mults:
        ax.legend(title=None if extra and not legend else "lr multiplier", frameon=False,
                  fontsize=6.5 if extra else None)
    return fig if fig is not None else ax.figure


def learning_curves_grid(epochs: pd.DataFrame, dataset: str, methods: list[str] | None = None):
    """`learning_curves` of every method on `dataset`, one panel per cell, one shared legend."""
    sub = epochs[epochs["dataset"] == dataset]
    methods = methods or list(dict.fromkeys(sub["method"]))
    fig, axes = _grid(len(methods))
    for ax, m in zip(axes, methods):
        learning_curves(sub, dataset, m, ax=ax, legend=False)
        ax.xaxis.set_tick_params(labelbottom=True)
        if ax not in axes[-min(4, len(axes)):]:
            ax.set_xlabel("")
    handles = [plt.Line2D([], [], **{**style(i), "linestyle": "-"}, label=_mult_label(k))
               for i, k in enumerate(sorted(sub["lr_mult"].unique(), reverse=True))]
    handles += [plt.Line2D([], [], color=GREY, linestyle="-", label="test"),
                plt.Line2D([], [], color=GREY, linestyle="--", label="train")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(f"Learning curves on {dataset}", y=1.06)
    fig.tight_layout()
    return fig


# ---- Experiment B: error against the flip probability -------------------------------------

_FLIP = re.compile(r"^(br|fr)SF(?:-(\d+))?\+BN\+BM$")


def flip_points(methods) -> dict[str, tuple[str, int]]:
    """method -> ("redrawn" | "fixed", p in %) for Experiment B's columns."""
    out = {}
    for m in methods:
        hit = _FLIP.match(m)
        if hit:
            out[m] = ("redrawn" if hit.group(1) == "br" else "fixed", int(hit.group(2) or 0))
    return out


def has_flip_data(runs: pd.DataFrame, dataset: str) -> bool:
    sub = runs[runs["experiment"].isin(["B1", "B2"]) & (runs["dataset"] == dataset)]
    return bool(flip_points(sub["method"].unique()))


def flip_probability(runs: pd.DataFrame, dataset: str, protocol: str = "paper"):
    """Error against p, the probability that a feedback sign disagrees with W (Experiment B):
    redrawn magnitudes (B1) and fixed ones (B2), ours solid, the paper's dotted, SGD a band."""
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    sgd = None
    for i, (exp, kind) in enumerate((("B1", "redrawn"), ("B2", "fixed"))):
        sub = runs[(runs["experiment"] == exp) & (runs["dataset"] == dataset)]
        pts = {m: p for m, (k, p) in flip_points(sub["method"].unique()).items() if k == kind}
        s = style(i)
        if pts:
            cells = cell_values(sub, protocol=protocol).set_index("method")
            xs = sorted(pts.items(), key=lambda kv: kv[1])
            ys = [cells.loc[m, "value"] for m, _ in xs]
            err = [cells.loc[m, "std"] for m, _ in xs]
            ax.errorbar([p for _, p in xs], ys, yerr=_yerr(err), capsize=3,
                        label=f"{kind} (ours)", **s)
            if "SGD" in cells.index and math.isfinite(cells.loc["SGD", "value"]):
                sgd = cells.loc["SGD", "value"]
        pub = P.published(exp)
        row = paper_row(dataset, pub)
        if row is not None:
            pp = sorted((p, pub.loc[row, m]) for m, (k, p) in flip_points(pub.columns).items()
                        if k == kind)
            ax.plot([p for p, _ in pp], [v for _, v in pp], color=s["color"], linestyle=":",
                    marker=s["marker"], markerfacecolor="none", label=f"{kind} (paper)")
    if sgd is not None:
        ax.axhline(sgd, color=GREY, linestyle="-.", linewidth=1.2, label="SGD (ours)")
    ax.set_xlabel("probability p that a feedback sign is flipped (%)")
    ax.set_ylabel("error (%)")
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.set_title(f"Experiment B on {dataset}")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


# ---- Experiment C2: bottom vs top ---------------------------------------------------------

def c2_bars(runs: pd.DataFrame, dataset: str, protocol: str = "paper"):
    """Grouped bars per method: @bottom (last layer random and frozen) and @top (every layer
    but the last), the paper's values as black markers."""
    sub = runs[(runs["experiment"] == "C2") & (runs["dataset"] == dataset)]
    cells = cell_values(sub, protocol=protocol).set_index("method")
    order = [c.split("@")[0] for c in P.columns("C2")]
    bases = list(dict.fromkeys(order + [m.split("@")[0] for m in cells.index if "@" in m]))
    bases = [b for b in bases if f"{b}@bottom" in cells.index or f"{b}@top" in cells.index]
    pub = P.published("C2")
    row = paper_row(dataset, pub)
    fig, ax = plt.subplots(figsize=(1.2 * max(len(bases), 2) + 1.5, 3.2))
    x = np.arange(len(bases))
    w = 0.38
    for j, (where, hatch) in enumerate((("bottom", "//"), ("top", ".."))):
        vals = [cells.loc[f"{b}@{where}", "value"] if f"{b}@{where}" in cells.index else np.nan
                for b in bases]
        errs = [cells.loc[f"{b}@{where}", "std"] if f"{b}@{where}" in cells.index else np.nan
                for b in bases]
        pos = x + (j - 0.5) * w
        ax.bar(pos, vals, w, yerr=_yerr(errs), capsize=3, color=OKABE_ITO[j],
               hatch=hatch, edgecolor="black", linewidth=0.6, label=where)
        if row is not None:
            pv = [pub.loc[row, f"{b}@{where}"] if f"{b}@{where}" in pub.columns else np.nan
                  for b in bases]
            ax.plot(pos, pv, linestyle="none", marker="D", color="black", markersize=5,
                    label="paper" if j == 0 else None)
    ax.set_xticks(x, bases, rotation=20, ha="right")
    ax.set_ylabel("error (%)")
    ax.set_title(f"Experiment C2 on {dataset}: random, frozen layers")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


# ---- alignment ----------------------------------------------------------------------------

def alignment_curves(alignment: pd.DataFrame, run_key: str, axes=None, legend: bool = True,
                     top: float | None = None):
    """The V–W angle and the error-signal angle per layer over epochs of one run (`top`: the
    largest angle to make room for; default: this run's)."""
    a = alignment[alignment["run_key"] == run_key]
    fig = None
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.8), sharey=True)
    layers = list(dict.fromkeys(a["layer"]))
    for i, layer in enumerate(layers):
        al = a[a["layer"] == layer].sort_values("epoch")
        axes[0].plot(al["epoch"], al["angle"], label=layer, **style(i))
        axes[1].plot(al["epoch"], al["grad_angle"], label=layer, **style(i))
    axes[0].set_ylabel("angle (degrees)")
    axes[0].set_title("V–W angle")
    axes[1].set_title("error signal vs backprop")
    if top is None:
        top = np.nanmax(a[["angle", "grad_angle"]].to_numpy(dtype=float), initial=0.0)
    for ax in axes:
        ax.set_xlabel("epoch")
        # Flipped signs give angles past 90°: show up to 180 only when they happen.
        ax.set_ylim(0, 95 if top <= 90 else 185)
        ax.set_yticks([0, 30, 60, 90] if top <= 90 else [0, 45, 90, 135, 180])
        _epoch_axis(ax, a["epoch"])
    if legend and layers:
        axes[1].legend(title="layer", frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    return fig if fig is not None else axes[0].figure


def alignment_grid(alignment: pd.DataFrame, dataset: str, runs: pd.DataFrame,
                   methods: list[str] | None = None, protocol: str = "paper"):
    """`alignment_curves` for the run behind each cell on `dataset` under `protocol`
    (`cells.cell_run`, among the runs with alignment data; one row per method); None when there
    is none. `runs`: one experiment's."""
    sub = alignment[alignment["dataset"] == dataset]
    if "scheme" in sub:  # symmetric backprop: V is W, both angles are 0 by construction
        sub = sub[sub["scheme"].fillna("") != "BP"]
    methods = [m for m in (methods or list(dict.fromkeys(sub["method"])))
               if m in set(sub["method"])]
    picked = [(m, cell_run(runs, dataset, m, protocol, sub.loc[sub["method"] == m, "run_key"]))
              for m in methods]
    picked = [(m, k) for m, k in picked if k is not None]
    if not picked:
        return None
    fig, axes = plt.subplots(len(picked), 2, figsize=(7.5, 2.1 * len(picked) + 0.6),
                             squeeze=False, sharey=True, sharex=True, layout="constrained")
    top = np.nanmax(sub[["angle", "grad_angle"]].to_numpy(dtype=float), initial=0.0)
    for i, (row, (m, k)) in enumerate(zip(axes, picked)):
        lr = runs.loc[runs["run_key"] == k, "lr_mult"].iloc[0]
        alignment_curves(sub, k, axes=row, legend=i == 0, top=top)  # one scale for all rows
        row[0].set_ylabel(f"{m}\n(k = {lr:g})\nangle (°)")
    for ax in axes[:-1].flat:
        ax.set_xlabel("")
    for ax in axes[1:].flat:
        ax.set_title("")
    fig.suptitle(f"Alignment on {dataset}")
    return fig


# ---- Li & Benna 2024 (PFA): alignment over training, error against feedback density ---------

# The three measures of Li & Benna's figures per layer and epoch (store.load_alignment): for
# PFA, V = B·R, so the V–W angle is their path alignment.
PFA_MEASURES = {"angle": "path alignment: angle V–W (°)", "norm_ratio": "norm ratio ‖V‖ / ‖W‖",
                "grad_angle": "error signal vs backprop (°)"}


def alignment_means(alignment: pd.DataFrame, dataset: str, method: str,
                    run_key: str | None = None) -> pd.DataFrame:
    """Per (layer, epoch) of one cell: each measure of `PFA_MEASURES` averaged over its runs
    (the seeds; a single run with `run_key`), its std over them and the number of runs; layers
    in the network's order."""
    a = alignment[(alignment["dataset"] == dataset) & (alignment["method"] == method)]
    if run_key is not None:
        a = a[a["run_key"] == run_key]
    cols = list(PFA_MEASURES)
    g = a.groupby(["layer", "epoch"], sort=False)[cols]
    out = g.mean().join(g.std(ddof=1).add_suffix("_std")).join(
        a.groupby(["layer", "epoch"], sort=False)["run_key"].nunique().rename("n_runs"))
    order = {layer: i for i, layer in enumerate(dict.fromkeys(a["layer"]))}
    out = out.reset_index()
    return out.sort_values(["layer", "epoch"], key=lambda c: c.map(order) if c.name == "layer"
                           else c).reset_index(drop=True)


def pfa_alignment(alignment: pd.DataFrame, dataset: str, methods: list[str] | None = None,
                  run_key: str | None = None):
    """Li & Benna's measures over training: per method (a row of panels) the path alignment
    (the V–W angle), the norm ratio ‖V‖/‖W‖ and the error-signal angle to backprop, one line
    per layer, the mean over the cell's seeds (a band: ± std) or one run (`run_key`). Methods
    without a V (BP, whose angles are 0 by construction; DFA, which has no V) are left out;
    None when no method is left."""
    sub = alignment[alignment["dataset"] == dataset]
    if run_key is not None:
        sub = sub[sub["run_key"] == run_key]
    if "scheme" in sub:
        sub = sub[sub["scheme"].fillna("") != "BP"]
    has_v = sub.groupby("method")["angle"].apply(lambda v: v.notna().any())
    have = [m for m in dict.fromkeys(sub["method"]) if has_v.get(m, False)]
    methods = [m for m in (methods or have) if m in have]
    if not methods:
        return None
    fig, axes = plt.subplots(len(methods), 3, figsize=(10.5, 2.2 * len(methods) + 0.7),
                             squeeze=False, sharex=True, layout="constrained")
    for row, m in zip(axes, methods):
        means = alignment_means(sub, dataset, m, run_key)
        for i, layer in enumerate(dict.fromkeys(means["layer"])):
            at = means[means["layer"] == layer]
            for ax, col in zip(row, PFA_MEASURES):
                s = style(i)
                ax.plot(at["epoch"], at[col], label=layer, **s)
                lo, hi = at[col] - at[f"{col}_std"], at[col] + at[f"{col}_std"]
                if np.isfinite(at[f"{col}_std"].to_numpy(dtype=float)).any():
                    ax.fill_between(at["epoch"], lo, hi, color=s["color"], alpha=0.15,
                                    linewidth=0)
        n = int(means["n_runs"].max()) if len(means) else 0
        row[0].set_ylabel(f"{m}\n({'1 run' if run_key else f'mean of {n} seeds'})")
        for ax in (row[0], row[2]):
            ax.set_ylim(0, 95 if np.nanmax(means[["angle", "grad_angle"]].to_numpy(
                dtype=float), initial=0.0) <= 90 else 185)
        for ax in row:
            _epoch_axis(ax, means["epoch"])
    for ax, title in zip(axes[0], PFA_MEASURES.values()):
        ax.set_title(title)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    axes[0][2].legend(title="layer", frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.suptitle(f"Alignment over training on {dataset}")
    return fig


_DENSITY = re.compile(r"^(.+) d=([0-9.eE+-]+)$")


def density_points(methods) -> dict[str, tuple[str, float]]:
    """column -> (method, density) for pfa-mnist-sparse's columns ("FA d=0.05")."""
    out = {}
    for m in methods:
        hit = _DENSITY.match(str(m))
        if hit:
            try:
                out[m] = (hit.group(1), float(hit.group(2)))
            except ValueError:
                continue
    return out


def density_curve(runs: pd.DataFrame, dataset: str, protocol: str = "paper",
                  number: str = "final", experiment: str = "pfa-mnist-sparse"):
    """Li & Benna's sparse-feedback figure: test error against the fraction of feedback
    connections kept, one line per method, mean ± std over seeds (a band), per seed the run
    `pick_run` picks and its final (`number="final"`) or protocol test error; None when the
    runs have no density columns on `dataset`."""
    from .cells import cell_stats  # the numbers behind the figure: one rule with the tables

    sub = runs[(runs["experiment"] == experiment) & (runs["dataset"] == dataset)]
    pts = density_points(sub["method"].unique())
    if not pts:
        return None
    stats = cell_stats(sub, protocol=protocol, number=number).set_index("method")
    fig, ax = plt.subplots(figsize=(4.8, 3.3))
    by_method = {}
    for col, (m, d) in pts.items():
        if col in stats.index:
            by_method.setdefault(m, []).append((d, *stats.loc[col, ["mean", "std", "n"]]))
    order = [m for m in P.SPARSE_METHODS if m in by_method] + sorted(
        set(by_method) - set(P.SPARSE_METHODS))
    for i, m in enumerate(order):
        xs, ys, sd, ns = (np.array(v, dtype=float) for v in zip(*sorted(by_method[m])))
        s = style(i)
        ax.plot(xs, ys, label=f"{m} (n = {int(ns.min())}{'' if ns.min() == ns.max() else '+'})",
                **s)
        if np.isfinite(sd).any():
            ax.fill_between(xs, ys - np.nan_to_num(sd), ys + np.nan_to_num(sd),
                            color=s["color"], alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks(list(P.DENSITIES), [f"{d:g}" for d in P.DENSITIES])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("feedback density (fraction of feedback connections kept)")
    what = "final test error" if number == "final" else "test error"
    ax.set_ylabel(f"{what} (%)")
    ax.set_title(f"Sparse feedback on {dataset}: mean ± std over seeds")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


# ---- a table against the paper --------------------------------------------------------------

def paper_heatmap(t: pd.DataFrame):
    """Ours − paper of a `report.table(..., paper=True)`, in percentage points: orange = we are
    worse, purple = better (PuOr is safe for colour-blind readers), grey = no comparison."""
    diff = t.attrs["diff"]
    if diff is None:
        raise ValueError("paper_heatmap needs a table made with paper=True")
    d = diff.to_numpy(dtype=float)
    lim = max(1.0, float(np.nanmax(np.abs(d)))) if np.isfinite(d).any() else 1.0
    fig, ax = plt.subplots(figsize=(0.62 * d.shape[1] + 2.2, 0.42 * d.shape[0] + 1.9))
    cmap = plt.get_cmap("PuOr_r").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(d), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(d.shape[1]), diff.columns, rotation=45, ha="right")
    ax.set_yticks(range(d.shape[0]), diff.index)
    ax.grid(False)
    for i in range(d.shape[0]):
        for j in range(d.shape[1]):
            if np.isfinite(d[i, j]):
                dark = abs(d[i, j]) > 0.6 * lim
                ax.text(j, i, f"{d[i, j]:+.1f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label="ours − paper (points)", shrink=0.9)
    ax.set_title(f"Experiment {t.attrs['experiment']}: ours − paper")
    fig.tight_layout()
    return fig
