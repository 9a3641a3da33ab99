"""`asymbp sweep`: an experiment (or a grid of methods × datasets) into the results database."""

from __future__ import annotations

import sys

from ..errors import AsymbpError

HELP = ("run an experiment of the paper (A, B1, B2, C1, C2, BM), BioTorch's or Li & Benna's "
        "(biotorch-*, pfa-*), or a methods x datasets grid")

EPILOG = """examples:
  asymbp sweep --experiment A --datasets mnist5k --epochs 65 --db results.db
  asymbp sweep --experiment A --datasets mnist5k --epochs 2 --lr-mults 10,1 --db quick.db
  asymbp sweep --methods "uSF+BN+BM,RndF+BN" --datasets mnist5k,mnist1d --seeds 1-3 --db grid.db
  asymbp sweep --experiment pfa-mnist-sparse --datasets mnist5k --epochs 3 --seeds 1,2 --db pfa.db
Running the same command again skips finished runs and resumes unfinished ones."""


def add_parser(sub) -> None:
    import argparse

    from ..sweep.plan import EXPERIMENTS, LR_MULTS, SEEDS
    from .run import add_run_options

    p = sub.add_parser("sweep", help=HELP, description=HELP + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", help=f"{', '.join(EXPERIMENTS)}: a published table's "
                                        "columns and rows (BioTorch's with their protocols)")
    p.add_argument("--methods", help="comma-separated method strings: a grid, or with "
                                     "--experiment a subset of its columns")
    p.add_argument("--datasets", help="comma-separated dataset keys (default with --experiment: "
                                      "the paper's datasets)")
    p.add_argument("--lr-mults", metavar="K,...",
                   help="learning-rate multipliers of every cell (default: "
                        f"{','.join(f'{k:g}' for k in LR_MULTS)}; BioTorch's experiments: 1)")
    p.add_argument("--seeds", help="seeds of every cell: 1 or 1,2,3 or 1-5 (default: "
                                   f"{','.join(map(str, SEEDS))}; Li & Benna's pfa-*: 1-5)")
    p.add_argument("--db", default="results.db", help="results database (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at once (default: the number of cores, local; the cluster's CPUs, "
                        "Ray); each gets cores // workers torch threads")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per worker (default: cores // workers)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local worker processes or a Ray cluster (default: %(default)s)")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    packing = p.add_mutually_exclusive_group()
    packing.add_argument("--pack", type=int, metavar="N",
                         help="train at most N runs of a cell (differing only in lr and seed) "
                              "as one packed model (default: 5 on a GPU, none on the CPU)")
    packing.add_argument("--no-pack", action="store_true",
                         help="train every run by itself (the same as --pack 1)")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned runs and what is already stored; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_run_options(p, per_run=False)
    p.set_defaults(func=run)


def plan_from_args(args):
    """The validated runs of the command (every user mistake is raised here)."""
    from ..sweep.plan import LR_MULTS, parse_floats, parse_list, parse_seeds, plan
    from .run import config_from_args

    return plan(experiment=args.experiment,
                methods=parse_list(args.methods, "method") or None,
                datasets=parse_list(args.datasets, "dataset") or None,
                # None: the experiment's own (BioTorch's: 1, an absolute lr), else LR_MULTS
                lr_mults=None if args.lr_mults is None else parse_floats(
                    args.lr_mults, "learning-rate multiplier", LR_MULTS),
                # None: the experiment's own (Li & Benna's: 1-5), else SEEDS
                seeds=None if args.seeds is None else parse_seeds(args.seeds),
                base=config_from_args(args))


def run(args) -> int:
    from .. import store
    from ..sweep import cores, sweep

    runs = plan_from_args(args)
    if args.workers is not None and args.workers < 1:
        raise AsymbpError(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise AsymbpError(f"--threads must be >= 1, got {args.threads}")
    if args.pack is not None and args.pack < 1:
        raise AsymbpError(f"--pack must be >= 1 runs, got {args.pack}; use --no-pack to train "
                          "every run by itself")
    if args.pack is not None and args.pack > 1 and args.backend != "local":
        raise AsymbpError("--pack is for --backend local (the Ray backend trains every run by "
                          "itself); leave --pack out or use --backend local")
    if args.address and args.backend != "ray":
        raise AsymbpError("--address is for --backend ray")
    workers = args.workers
    if args.backend == "ray":
        try:
            import ray
        except ImportError:
            raise AsymbpError("--backend ray needs the ray package: pip install 'asymbp[ray]'"
                              ) from None
        if workers is None:
            import ray

            if not ray.is_initialized():
                ray.init(address=args.address, log_to_driver=False, include_dashboard=False,
                         configure_logging=False)
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // (args.threads or 1))
    workers = workers or cores()
    store.check(args.db)  # a non-SQLite file or a newer schema stops here, nothing written
    if args.dry_run:
        return _dry_run(runs, args.db)
    store.check_writable(args.db)  # a read-only --db stops here, before the device lines
    if args.backend == "local" or not args.address:
        # The workers run on this machine: what would make every run fail stops here.
        preflight(_unfinished(runs, args.db, args.retry_failed))
    counts = sweep(runs, args.db, workers=workers, backend=args.backend, address=args.address,
                   threads=args.threads, retry_failed=args.retry_failed,
                   pack=1 if args.no_pack else args.pack,
                   progress=not args.no_progress and sys.stderr.isatty())
    _summary(runs, args.db, counts)
    if counts["failed"]:
        print(f"asymbp: {counts['failed']} of {counts['planned']} runs failed; see why with "
              f"'asymbp status --db {args.db}', rerun them with --retry-failed",
              file=sys.stderr)
        return 1
    return 0


def _unfinished(runs, db, retry_failed: bool) -> list:
    """The runs `sweep` will start: not done or diverged (nor failed, unless retried) in `db`."""
    from pathlib import Path

    from ..store import Store

    if not Path(db).exists():
        return list(runs)
    with Store(db, readonly=True) as s:
        stored = s.statuses([r.key for r in runs])
    skip = ("done", "diverged") if retry_failed else ("done", "diverged", "failed")
    return [r for r in runs if stored.get(r.key) not in skip]


def preflight(runs) -> None:
    """Check, before any run starts, what would fail every run: the device is on this machine,
    each dataset loads and is valid (each loaded once, then dropped: the workers load their
    own), and each network takes its dataset's inputs. Prints the device and notes on stderr."""
    from .. import data, models
    from ..config import TrainConfig
    from ..hardware import bf16_note, check_device, resolve_device
    from ..train import honest_split, resized_shape

    d = TrainConfig()
    configs = [{**d.to_dict(), **r.config} for r in runs]
    for device in sorted({c["device"] for c in configs}):
        check_device(device)
    by_data: dict[tuple, set] = {}
    for c in configs:
        by_data.setdefault((c["dataset"], c["data_dir"], c["data_seed"], c["synthetic"]),
                           set()).add(
            (c["model"], c["protocol"], c["val_fraction"], c["val_size"], c["resize"]))
    for (key, data_dir, seed, synthetic), wanted in by_data.items():
        ds = data.load(key, data_dir, seed=seed, synthetic=synthetic)
        for model, protocol, val_fraction, val_size, size in sorted(wanted, key=str):
            models.check_fit(model or ds.model, resized_shape(ds.input_shape, size), key)
            # an honest split that leaves something to train on
            honest_split(TrainConfig(protocol=protocol, val_fraction=val_fraction,
                                     val_size=val_size, data_seed=seed), ds)
        del ds
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in sorted({c["device"] for c in configs}):
        resolved = resolve_device(device)
        given = f" ({device})" if device != resolved else ""
        spread = f", the workers spread over {n_gpus} GPUs" if (
            resolved == "cuda" and n_gpus > 1) else ""
        print(f"device: {resolved}{given}{spread}", file=sys.stderr, flush=True)
    for amp, device in sorted({(c["amp"], resolve_device(c["device"])) for c in configs}):
        if note := bf16_note(amp, device):
            print(note, file=sys.stderr, flush=True)


DRY_RUN_LINES = 200  # a plan of thousands of runs is summarised, not printed in full


def _dry_run(runs, db) -> int:
    from pathlib import Path

    from ..store import Store
    from ..sweep import label

    stored = {}
    if Path(db).exists():
        with Store(db, readonly=True) as s:
            stored = s.statuses([r.key for r in runs])
    for r in runs[:DRY_RUN_LINES]:
        print(f"{r.key}  {stored.get(r.key, 'new'):<8}  {r.experiment:<4} {label(r)}")
    if len(runs) > DRY_RUN_LINES:
        print(f"... and {len(runs) - DRY_RUN_LINES} more")
    print(f"{len(runs)} runs, {sum(1 for r in runs if r.key not in stored)} not yet in {db}")
    return 0


def _summary(runs, db, counts) -> None:
    from ..paper import TABLES as PAPER_TABLES
    from ..report import render
    from ..report import table as report_table
    from ..store import load

    print(f"{counts['planned']} runs: {counts['done']} done, {counts['diverged']} diverged, "
          f"{counts['failed']} failed, {counts['pending'] + counts['running']} unfinished "
          f"({counts['skipped']} already in {db})")
    keys = {r.key for r in runs}
    df = load(db)
    df = df[df["run_key"].isin(keys)]
    protocol = runs[0].config.get("protocol", "paper") if runs else "paper"
    for exp in df["experiment"].drop_duplicates():
        print(f"\n{exp} ({protocol} protocol, test error %):")
        print(render(report_table(df, exp, protocol=protocol), "md"))
        if exp in PAPER_TABLES:
            print(f"(beside the published numbers: asymbp table --experiment {exp} --db {db} "
                  "--paper)")
