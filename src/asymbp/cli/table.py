"""`asymbp table`: one of the paper's tables from the results database."""

from __future__ import annotations

from pathlib import Path

from ..errors import AsymbpError

HELP = ("print one of the papers' tables (A, B1, B2, C1, C2, BM, biotorch-*, pfa-*) from the "
        "results database")


def add_parser(sub) -> None:
    p = sub.add_parser("table", help=HELP, description=HELP + ". Cells are error % "
                       "(mean ± std over seeds); ▲/▼ (yellow/blue) mark cells 3 points or "
                       "more worse/better than the row's SGD, as in the paper.")
    p.add_argument("--experiment", required=True,
                   help="A, B1, B2, C1, C2, BM, biotorch-mnist, biotorch-cifar10, "
                        "biotorch-imagenet (BioTorch's table, by its own rule: on CIFAR-10 "
                        "and ImageNet the best-validation model), pfa-mnist, pfa-mnist-sparse, "
                        "pfa-cifar10, pfa-imagenet (Li & Benna's: no published numbers), or "
                        "grid (a user grid of methods x datasets)")
    p.add_argument("--db", default="results.db", help="results database (default: %(default)s)")
    p.add_argument("--format", default="md", metavar="FORMAT",
                   help="md, csv, html or latex (default: %(default)s)")
    p.add_argument("--paper", action="store_true",
                   help="show the published value and ours - paper beside each cell")
    p.add_argument("--protocol", default=None, metavar="PROTOCOL",
                   help="paper (best test error over epochs and multipliers) or honest "
                        "(a validation split picks them) (default: the experiment's own: "
                        "honest for biotorch-cifar10, else paper)")
    p.add_argument("--datasets", default=None, help="rows, comma-separated (default: all run)")
    p.add_argument("--methods", default=None,
                   help="columns, comma-separated (default: the paper's, in its order)")
    p.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=run)


def _list(text):
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise AsymbpError(f"empty list {text!r}; give comma-separated names")
    return items


def run(args) -> int:
    from .. import report

    if args.format not in report.FORMATS:  # before the database is read
        from ..errors import unknown

        raise unknown("format", args.format, report.FORMATS)
    out = Path(args.out) if args.out else None
    if out is not None:  # before the database is read, too
        if out.is_dir():
            raise AsymbpError(f"{out} is a folder; --out needs a file name")
        report.check_out_folder(out.parent)
    t = report.table(args.db, args.experiment, protocol=args.protocol, paper=args.paper,
                     datasets=_list(args.datasets), methods=_list(args.methods))
    text = report.render(t, args.format)
    if out is not None:
        report.write_out(out, text)  # missing folders are made
    else:
        print(text, end="")
    return 0
