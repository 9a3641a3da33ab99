"""The report page: every table and figure a results database supports, with its configs and
provenance, as one self-contained HTML file (`write_report`)."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import pandas as pd

from .. import paper as P
from .. import store
from ..errors import AsymbpError
from .render import check_out_folder, header, to_html, write_out
from .tables import (LEGEND, PROTOCOL_TEXT, dataset_order, experiments_in, load_runs,
                     methods_order, table)

# The protocol of the page's first table of each experiment and of its figures: a figure shows
# the runs behind that table's cells.
FIGURE_PROTOCOL = "paper"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #111;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #444; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.4em; }
th, td { border: 1px solid #999; padding: 0.2em 0.45em; text-align: right; }
th { background: #eee; } tbody th { text-align: left; }
.scroll { overflow-x: auto; }
.legend { font-size: 0.85em; color: #333; } .caption { font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #333; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
"""


def _figure_html(fig, caption: str) -> str:
    from .plots import png_bytes  # matplotlib: only when a page is drawn

    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    alt = html.escape(caption, quote=True)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _config_summary(runs: pd.DataFrame) -> tuple[dict, list[str]]:
    """The config fields shared by every run, and the names of those that vary."""
    configs = [c if isinstance(c, dict) else json.loads(c) for c in runs["config"]]
    keys = sorted(set().union(*configs)) if configs else []
    shared, varying = {}, []
    for k in keys:
        vals = {json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}
        if len(vals) == 1:
            shared[k] = configs[0].get(k)
        else:
            varying.append(k)
    return shared, varying


def _provenance_html(runs: pd.DataFrame) -> str:
    e = html.escape
    out = []
    for col in ("version", "commit", "host", "device"):
        if col in runs:
            counts = runs[col].fillna("—").astype(str).value_counts()
            out.append(f"<li>{col}: " + ", ".join(f"<code>{e(v)}</code> ({n} runs)"
                                                   for v, n in counts.items()) + "</li>")
    return "<ul>" + "".join(out) + "</ul>"


def _runs_html(runs: pd.DataFrame) -> str:
    cols = [c for c in ["run_key", "method", "dataset", "lr_mult", "seed", "procedure", "status",
                        "epochs", "best_test_error", "best_epoch", "test_error",
                        "honest_test_error", "diverged_epoch", "seconds", "version", "commit",
                        "finished", "error"] if c in runs]
    view = runs[cols].copy()
    for c in ("best_test_error", "test_error", "honest_test_error", "seconds"):
        if c in view:
            view[c] = view[c].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    return view.to_html(index=False, na_rep="", border=0, classes="runs", escape=True)


def report_html(db_or_runs, epochs: pd.DataFrame | None = None,
                alignment: pd.DataFrame | None = None, title: str = "asymbp report") -> str:
    """The report page as one self-contained HTML string (figures embedded as PNG data URIs).

    For each experiment with runs: its table beside the paper, the heat map of ours − paper,
    Experiment B's error against the flip probability, C2's bottom/top bars, the learning
    curves and the alignment angles of every dataset; then configs and provenance.
    """
    runs = load_runs(db_or_runs)
    if not len(runs):
        raise AsymbpError("the database has no runs; run 'asymbp sweep --db ...' first")
    if epochs is None or alignment is None:
        if isinstance(db_or_runs, pd.DataFrame):
            epochs = epochs if epochs is not None else pd.DataFrame()
            alignment = alignment if alignment is not None else pd.DataFrame()
        else:
            epochs = store.load_epochs(db_or_runs) if epochs is None else epochs
            alignment = store.load_alignment(db_or_runs) if alignment is None else alignment

    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    exps = experiments_in(runs) + (["grid"] if (runs["experiment"] == "grid").any() else [])
    n_done = int(runs["status"].isin(["done", "diverged"]).sum())
    body.append(f"<p>{len(runs)} runs ({n_done} finished) in {len(exps)} experiment(s): "
                f"{e(', '.join(exps))}. Error rates in %. Tables use the "
                f"{e(PROTOCOL_TEXT[FIGURE_PROTOCOL])}.</p>")
    body.append("<nav><ul>" + "".join(f'<li><a href="#exp-{e(x)}">{e(x)}</a></li>' for x in exps)
                + '<li><a href="#provenance">configs and provenance</a></li></ul></nav>')
    for x in exps:
        body += _experiment_html(x, runs, exps, epochs, alignment)
    body += _provenance_section(runs, exps)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _experiment_html(x: str, runs: pd.DataFrame, exps: list[str], epochs: pd.DataFrame,
                     alignment: pd.DataFrame) -> list[str]:
    """Experiment `x`'s section: its tables (the honest one too where runs have it), then its
    figures, each of the protocol the page's figures use."""
    import matplotlib.pyplot as plt  # matplotlib: only when a page is drawn

    from .plots import (alignment_grid, c2_bars, density_curve, flip_probability, has_flip_data,
                        learning_curves_grid, paper_heatmap, pfa_alignment)

    e = html.escape
    xr = runs[runs["experiment"] == x]
    title_x = "User grid" if x == "grid" else P.caption(x)
    body = [f'<h2 id="exp-{e(x)}">{e(title_x)}</h2>']

    def add(fig, caption):
        body.append(_figure_html(fig, caption))
        plt.close(fig)

    t = table(runs, x, protocol=FIGURE_PROTOCOL, paper=x in P.TABLES)
    tables = [t]
    if xr["honest_test_error"].notna().any():
        tables.append(table(runs, x, protocol="honest"))
    for tt in tables:
        body.append(f'<p class="caption">{e(header(tt))}</p>'
                    f'<div class="scroll">{to_html(tt, caption=False)}</div>')
    body.append(f'<p class="legend">{e(LEGEND)}.</p>')
    if x in P.TABLES and t.attrs["published"].notna().to_numpy().any():
        add(paper_heatmap(t), f"Experiment {x}: our error minus the paper's "
                                    "(percentage points; orange = worse, purple = better).")
    if x == next(b for b in ("B1", "B2") if b in exps + ["B2"]):  # one figure for B1 + B2
        for d in dataset_order(set(xr["dataset"])):
            if has_flip_data(runs, d):
                add(flip_probability(runs, d, protocol=FIGURE_PROTOCOL),
                    f"Experiment B on {d}: error against the probability p that a feedback "
                    "sign is flipped, magnitudes redrawn (B1) or fixed (B2); dotted: the "
                    "paper.")
    if x == "C2":
        for d in dataset_order(set(xr["dataset"])):
            add(c2_bars(runs, d, protocol=FIGURE_PROTOCOL),
                f"Experiment C2 on {d}: bottom (last layer random and frozen) against top "
                "(all but the last).")
    if x == "pfa-mnist-sparse":
        for d in dataset_order(set(xr["dataset"])):
            fig = density_curve(runs, d, protocol=FIGURE_PROTOCOL)
            if fig is not None:
                add(fig, f"{x} on {d}: final test error against the fraction of feedback "
                         "connections kept, one line per method, mean ± std over seeds.")
    xe = epochs[epochs["experiment"] == x] if len(epochs) else epochs
    for d in dataset_order(set(xe["dataset"])) if len(xe) else []:
        add(learning_curves_grid(xe, d, methods=methods_order(x, xe, d)),
            f"Experiment {x} on {d}: test error (solid) and training error (dashed) per "
            "epoch, one line per learning-rate multiplier.")
    xa = alignment[alignment["experiment"] == x] if len(alignment) else alignment
    for d in dataset_order(set(xa["dataset"])) if x in P.UNPUBLISHED and len(xa) else []:
        shown = methods_order(x, xa, d)
        if x == "pfa-mnist-sparse":  # 18 rows of panels are too many: the densest, sparsest
            ends = {P.density_column(m, v) for m in P.SPARSE_METHODS
                    for v in (min(P.DENSITIES), max(P.DENSITIES))}
            shown = [m for m in shown if m in ends]
        fig = pfa_alignment(xa, d, methods=shown)
        if fig is not None:
            add(fig, f"{x} on {d}: Li & Benna's measures per layer over training, the mean "
                     "over seeds (band: ± std): the path alignment (the angle between W and "
                     "V, for PFA V = B·R), the norm ratio ‖V‖/‖W‖, and the angle between the "
                     "error signal and backprop's.")
    for d in dataset_order(set(xa["dataset"])) if x not in P.UNPUBLISHED and len(xa) else []:
        fig = alignment_grid(xa, d, runs=xr, methods=methods_order(x, xa, d),
                                   protocol=FIGURE_PROTOCOL)
        if fig is not None:
            add(fig, f"Experiment {x} on {d}: angle between V and W (left) and between the "
                     "error signal and backprop's (right) per layer, for the run behind "
                     "each cell.")
    return body


def _provenance_section(runs: pd.DataFrame, exps: list[str]) -> list[str]:
    """Versions, commits, hosts and devices; per experiment its shared config and every run."""
    e = html.escape
    body = ['<h2 id="provenance">Configs, versions and commits</h2>', _provenance_html(runs)]
    for x in exps:
        xr = runs[runs["experiment"] == x]
        shared, varying = _config_summary(xr)
        body.append(f"<h3>Experiment {e(x)}</h3><p>Config shared by its {len(xr)} runs "
                    f"(varying: {e(', '.join(varying)) or 'nothing'}; a field not stored was "
                    "at its <code>asymbp.train.TrainConfig</code> default at the run's "
                    "commit):</p>")
        body.append(f"<pre>{e(json.dumps(shared, indent=1, sort_keys=True, default=str))}</pre>")
        body.append(f'<details><summary>every run of {e(x)}</summary><div class="scroll">'
                    f"{_runs_html(xr)}</div></details>")
    return body


def write_report(db, out: str | os.PathLike) -> Path:
    """Write `index.html` (self-contained) into the folder `out` (made if missing); return its
    path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AsymbpError(f"{out} is a file; --out needs a folder for the report")
    check_out_folder(out)  # before the figures are drawn
    return write_out(out / "index.html", report_html(db))
