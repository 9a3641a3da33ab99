"""The paper's tables, figures and report page from the results database (DESIGN §6).

`table(db, "A")` is the paper's Table 2 as a DataFrame (its numbers in `.attrs`),
`render(table, "md" | "csv" | "html" | "latex")` writes it out, `write_report(db, folder)` makes
the one-page HTML report with every table and figure the database supports.

The modules, each importing only those above it:

    cells    which runs stand behind a cell, and its value, under each protocol
    tables   the paper-shaped table: highlights, the published numbers beside ours
    render   a table as Markdown, CSV, HTML or LaTeX; writing it to a file
    plots    the figures (matplotlib; imported on first use: `asymbp.report.plots`)
    page     the HTML report
"""

from ..config import PROTOCOLS
from .cells import (CELL_COLUMNS, SEED_COLUMNS, STATS_COLUMNS, cell_run, cell_stats, cell_values,
                    check_protocol, pick_run, seed_values)
from .page import report_html, write_report
from .render import (COLOURS, FORMATS, LATEX_COLOURS, check_out_folder, header, render, to_csv,
                     to_html, to_latex, to_markdown, write_out)
from .tables import (DIVERGED, HIGHLIGHT_POINTS, LEGEND, MARK, MISSING, PAPER_ROW, PARTIAL,
                     PROTOCOL_TEXT, STAND_IN_NOTES, baseline_of, dataset_order, experiments_in,
                     highlights, load_runs, methods_order, paper_row, table)

__all__ = [
    "CELL_COLUMNS", "COLOURS", "DIVERGED", "FORMATS", "HIGHLIGHT_POINTS", "LATEX_COLOURS",
    "LEGEND", "MARK", "MISSING", "PAPER_ROW", "PARTIAL", "PROTOCOLS", "PROTOCOL_TEXT",
    "SEED_COLUMNS", "STAND_IN_NOTES", "STATS_COLUMNS", "baseline_of", "cell_run",
    "cell_stats", "cell_values", "check_out_folder", "check_protocol", "dataset_order",
    "experiments_in", "header", "highlights", "load_runs", "methods_order", "paper_row",
    "pick_run", "render", "report_html", "seed_values", "table", "to_csv", "to_html",
    "to_latex", "to_markdown", "write_out", "write_report",
]


def __getattr__(name: str):
    if name == "plots":  # matplotlib costs a second: only for those who draw (PEP 562)
        import importlib

        return importlib.import_module(f"{__name__}.plots")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
