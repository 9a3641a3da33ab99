"""`asymbp status`: what a results database holds and what is running."""

from __future__ import annotations

HELP = "show a results database: runs by status, per experiment and dataset, runs in progress"


def add_parser(sub) -> None:
    p = sub.add_parser("status", help=HELP, description=HELP + ".")
    p.add_argument("--db", default="results.db", help="results database (default: %(default)s)")
    p.add_argument("--cells", action="store_true",
                   help="also print the cell values (paper protocol) of each experiment")
    p.add_argument("--protocol", choices=["paper", "honest"], default="paper",
                   help="protocol of --cells (default: %(default)s)")
    p.set_defaults(func=run)


def _sweep_alive(meta: dict) -> bool | None:
    import socket

    from ..store import pid_alive

    if meta.get("sweep_state") != "running" or not meta.get("sweep_pid"):
        return False
    if meta.get("sweep_host") != socket.gethostname():
        return None  # cannot tell from here
    return pid_alive(int(meta["sweep_pid"]))


def run(args) -> int:
    import pandas as pd

    from ..report import render
    from ..report import table as report_table
    from ..store import STATUSES, Store, load

    with Store(args.db, readonly=True) as s:
        meta = s.meta()
        df = load(s)
    if df.empty:
        print(f"{args.db}: no runs yet")
        return 0
    counts = df["status"].value_counts()
    print(f"{args.db}: {len(df)} runs, schema {meta.get('schema_version')}: " + ", ".join(
        f"{counts.get(st, 0)} {st}" for st in STATUSES))
    by = (df.groupby(["experiment", "dataset", "status"]).size().unstack(fill_value=0)
          .reindex(columns=list(STATUSES), fill_value=0).rename_axis(columns=None))
    by["epochs"] = df.groupby(["experiment", "dataset"])["epochs_done"].sum()
    with pd.option_context("display.width", 200, "display.max_columns", 50,
                           "display.max_rows", 500):
        print()
        print(by.to_string())
        running = df[df["status"] == "running"]
        if len(running):
            alive = _sweep_alive(meta)
            note = {True: f"sweep pid {meta.get('sweep_pid')} on {meta.get('sweep_host')}",
                    False: "no sweep is running: these resume when the sweep is run again",
                    None: f"sweep on {meta.get('sweep_host')}"}[alive]
            print(f"\nrunning ({note}):")
            for r in running.itertuples(index=False):
                proc = f" [{r.procedure}]" if r.procedure else ""
                print(f"  {r.experiment} {r.method}{proc} on {r.dataset} k={r.lr_mult:g} "
                      f"seed {r.seed}: epoch {r.epochs_done}/{r.epochs}, since {r.started}, "
                      f"{r.host}")
        failed = df[df["status"] == "failed"]
        if len(failed):
            print("\nfailed (rerun with 'asymbp sweep ... --retry-failed'):")
            for r in failed.itertuples(index=False):
                first = (r.error or "").splitlines()[0] if r.error else ""
                print(f"  {r.experiment} {r.method} on {r.dataset} k={r.lr_mult:g} "
                      f"seed {r.seed}: {first}")
        if args.cells:
            for exp in df["experiment"].drop_duplicates():
                print(f"\n{exp} ({args.protocol} protocol, test error %):")
                print(render(report_table(df, exp, protocol=args.protocol), "md"))
    return 0
