"""`asymbp report`: one self-contained HTML page with every table and figure of a database."""

from __future__ import annotations

HELP = "write an HTML report (tables beside the paper, figures, configs, provenance)"


def add_parser(sub) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP + " into a folder; the page "
                       "embeds its images, so index.html alone is the whole report.")
    p.add_argument("--db", default="results.db", help="results database (default: %(default)s)")
    p.add_argument("--out", default="report", metavar="FOLDER",
                   help="folder for index.html (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import report

    path = report.write_report(args.db, args.out)
    print(path)
    return 0
