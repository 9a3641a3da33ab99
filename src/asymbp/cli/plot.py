"""`asymbp plot`: one figure of Li & Benna's experiments from the results database, as PNG and
SVG (the report page has every figure; this writes one as files for a paper or a note)."""

from __future__ import annotations

from ..errors import AsymbpError, unknown

HELP = "draw one figure (PNG + SVG): error vs feedback density, or alignment over training"
KINDS = ("density", "alignment")

EPILOG = """examples:
  asymbp plot density --db pfa.db --out pfa_density
  asymbp plot alignment --db pfa.db --experiment pfa-mnist --methods PFA,FA --out pfa_alignment
'density' draws pfa-mnist-sparse's final test error against the density, one line per method
(mean ± std over seeds); 'alignment' the path alignment (the V-W angle; for PFA V = B·R), the
norm ratio and the error-signal angle per layer over epochs, the mean over seeds (or --run)."""


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("plot", help=HELP, description=HELP + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", metavar="KIND", help="density or alignment")
    p.add_argument("--db", default="results.db", help="results database (default: %(default)s)")
    p.add_argument("--experiment", default=None,
                   help="the experiment (default: pfa-mnist-sparse for density, pfa-mnist for "
                        "alignment)")
    p.add_argument("--dataset", default=None,
                   help="the row (default: the experiment's only one in the database)")
    p.add_argument("--methods", default=None,
                   help="alignment: columns, comma-separated (default: every one with a V)")
    p.add_argument("--run", default=None, metavar="RUN_KEY",
                   help="alignment: one run instead of the mean over seeds")
    p.add_argument("--protocol", default="paper", metavar="PROTOCOL",
                   help="density: which run of a seed counts, paper or honest (default: "
                        "%(default)s)")
    p.add_argument("--number", default="final", metavar="NUMBER",
                   help="density: final (the picked run's last-epoch test error) or protocol "
                        "(the table's number) (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="STEM",
                   help="write STEM.png and STEM.svg (a .png/.svg suffix is dropped)")
    p.set_defaults(func=run)


def _dataset(frame, experiment: str, given: str | None) -> str:
    have = sorted(set(frame.loc[frame["experiment"] == experiment, "dataset"])) if len(
        frame) else []
    if not have:
        raise AsymbpError(f"no runs of {experiment} with this figure's data in the database; "
                          f"run 'asymbp sweep --experiment {experiment} ...' first")
    if given is None:
        if len(have) > 1:
            raise AsymbpError(f"{experiment} has several rows ({', '.join(have)}); give "
                              "--dataset")
        return have[0]
    if given not in have:
        raise unknown(f"dataset of {experiment} in the database", given, have)
    return given


def run(args) -> int:
    from pathlib import Path

    from .. import report, store
    from ..report.cells import NUMBERS

    if args.kind not in KINDS:
        raise unknown("figure", args.kind, KINDS)
    if args.number not in NUMBERS:
        raise unknown("number", args.number, NUMBERS)
    report.check_protocol(args.protocol)
    stem = Path(args.out)
    if stem.suffix in (".png", ".svg"):
        stem = stem.with_suffix("")
    report.check_out_folder(stem.parent)  # before the database is read
    runs = report.load_runs(args.db)
    from ..report import plots  # matplotlib: only here

    if args.kind == "density":
        exp = args.experiment or "pfa-mnist-sparse"
        d = _dataset(runs, exp, args.dataset)
        fig = plots.density_curve(runs, d, protocol=args.protocol, number=args.number,
                                  experiment=exp)
        if fig is None:
            raise AsymbpError(f"{exp} on {d} has no density columns ('FA d=0.05', ...); "
                              "the density figure is pfa-mnist-sparse's")
    else:
        exp = args.experiment or "pfa-mnist"
        alignment = store.load_alignment(args.db)
        d = _dataset(alignment, exp, args.dataset)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] \
            if args.methods else None
        sub = alignment[alignment["experiment"] == exp]
        if methods:
            have = set(sub.loc[sub["dataset"] == d, "method"])
            for m in methods:
                if m not in have:
                    raise unknown(f"method of {exp} on {d} with alignment data", m,
                                  sorted(have))
        if args.run is not None and args.run not in set(sub["run_key"]):
            raise AsymbpError(f"no run {args.run!r} of {exp} with alignment data; see the "
                              f"run keys with 'asymbp status --db {args.db}'")
        fig = plots.pfa_alignment(sub, d, methods=methods, run_key=args.run)
        if fig is None:
            raise AsymbpError(f"no method of {exp} on {d} has feedback weights V to align "
                              "(BP and DFA have none); run FA, uSF or PFA")
    for path in plots.save(fig, stem):
        print(path)
    return 0
