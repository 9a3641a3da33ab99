"""A table (`asymbp.report.table`) as text: Markdown, CSV, HTML or LaTeX (`render`), and the
one safe way to write it to a file (`write_out`)."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from ..errors import AsymbpError, unknown
from .tables import LEGEND, MARK, PROTOCOL_TEXT

COLOURS = {"worse": "#ffe98a", "better": "#a9d3f5"}  # HTML backgrounds
LATEX_COLOURS = {"worse": "yellow!45", "better": "cyan!25"}


def header(t: pd.DataFrame) -> str:
    """The caption line: which table, which protocol, what beside each cell, the notes."""
    a = t.attrs
    seeds = a["n_seeds"].to_numpy()
    spread = ", mean ± std over seeds" if (seeds > 1).any() else ""
    head = f"{a['caption']}. Error % ({PROTOCOL_TEXT[a['protocol']]}{spread})"
    if a.get("published") is not None:
        head += "; beside each: the published value and ours − paper (Δ)"
    head += "".join(f". Note: {n}" for n in a.get("notes", []))
    return head + "."


def _rows(t: pd.DataFrame):
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
    lines = [f"**{header(t)}**", ""]
    labels = _labels(t)
    lines.append("| dataset | " + " | ".join(labels) + " |")
    lines.append("|---|" + "---:|" * len(labels))
    for d, cells in _rows(t):
        texts = [txt + (f" {MARK[h]}" if h else "") for _, txt, h in cells]
        lines.append(f"| {d} | " + " | ".join(texts) + " |")
    lines += ["", LEGEND + "."]
    return "\n".join(lines) + "\n"


def to_csv(t: pd.DataFrame) -> str:
    """CSV of the numbers: per method its mean, std, seeds and status (and paper, Δ)."""
    a = t.attrs
    cols = {}  # built whole, then one DataFrame (24 methods x 5 columns would fragment one)
    for m in a["value"].columns:
        cols[m] = a["value"][m].round(4)
        cols[f"{m} std"] = a["std"][m].round(4)
        cols[f"{m} seeds"] = a["n_seeds"][m]
        cols[f"{m} status"] = a["status"][m]
        cols[f"{m} highlight"] = a["highlight"][m]
        if a.get("published") is not None:
            cols[f"{m} paper"] = a["published"][m]
            cols[f"{m} diff"] = a["diff"][m].round(4)
    return pd.DataFrame(cols, index=t.index).to_csv()


def to_html(t: pd.DataFrame, caption: bool = True) -> str:
    """An HTML table in the paper's colours, with the ▲/▼ marks too (print, colour blindness);
    `caption=False` leaves the caption out (the report puts it above a scrolling table)."""
    e = html.escape
    paired = isinstance(t.columns, pd.MultiIndex)
    rows = ['<table class="asymbp-table">']
    if caption:
        rows.append(f"<caption>{e(header(t))}</caption>")
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
    for d, cells in _rows(t):
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
             f"\\caption{{{_tex(header(t))}}}",
             "\\begin{tabular}{l" + "r" * n + "}", "\\hline"]
    if paired:
        methods = list(dict.fromkeys(c[0] for c in t.columns))
        lines.append("dataset & " + " & ".join(f"\\multicolumn{{3}}{{c}}{{{_tex(m)}}}"
                                               for m in methods) + " \\\\")
        lines.append(" & " + " & ".join("ours & paper & $\\Delta$" for _ in methods) + " \\\\")
    else:
        lines.append("dataset & " + " & ".join(_tex(c) for c in t.columns) + " \\\\")
    lines.append("\\hline")
    for d, cells in _rows(t):
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
