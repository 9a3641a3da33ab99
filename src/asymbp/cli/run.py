"""`asymbp run`: one training run."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import AsymbpError

HELP = "train one run (a method on a dataset) and print its per-epoch metrics"
EPILOG = (
    "The loss is the sum of the per-example cross-entropies over a mini-batch, so the paper's "
    "learning rates apply as printed: lr = base-lr x lr-mult, the paper sweeps lr-mult over "
    "100, 10, 1, 0.1, 0.01. Example: asymbp run --dataset mnist5k --method uSF+BN+BM "
    "--lr-mult 1 --epochs 65"
)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help=HELP, description=HELP + ".", epilog=EPILOG)
    add_run_options(p)
    p.add_argument("--checkpoint", metavar="PATH",
                   help="save the run's state after every epoch and resume from it if it exists")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object (test_error, best_test_error, "
                        "diverged, epochs, ...) instead of the epoch lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel over N processes on this machine (torchrun; gloo on "
                        "CPU, nccl on CUDA); the same as torchrun --nproc_per_node N -m asymbp run")
    p.set_defaults(func=run)


def add_run_options(p, per_run: bool = True) -> None:
    """One option per `TrainConfig` field, generated from its declaration (asymbp.config):
    `--lr-mult` for `lr_mult`, its help, choices and metavar. `per_run=False` (asymbp sweep)
    leaves out the fields a sweep sets for each run (it has --datasets, --methods, --lr-mults
    and --seeds instead)."""
    from ..config import FIELDS

    for f in FIELDS:
        if f.metadata["cli"] and (per_run or not f.metadata["per_run"]):
            p.add_argument(_flag(f.name), dest=f.name, **_argument(f))
    # repeatable: each KEY=VALUE one option of the method's feedback scheme (scheme_options)
    p.add_argument("--scheme-option", dest="scheme_option", action="append", metavar="KEY=VALUE",
                   help="an option of the feedback scheme, repeatable, e.g. --scheme-option "
                        "scale=xavier --scheme-option density=0.1 (see 'asymbp methods'); "
                        "stored in the run's config")
    # an optional value: --synthetic alone is the dataset's own sizes
    p.add_argument("--synthetic", nargs="?", const=0, type=int, metavar="N",
                   help="random data of the dataset's shapes and sizes, at most N training and "
                        "N test examples (no N: all of them): to time and smoke-test without "
                        "the data")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argument(f) -> dict:
    """argparse's keywords for the option of field `f`, from its annotation and metadata:
    a bool is a --x/--no-x switch, `bool | str` a switch with an optional value (--compile
    [MODE]), anything else one value of its type."""
    from ..config import field_types

    meta, types = f.metadata, field_types()[f.name]
    kw = {"default": f.default, "help": _help(f)}
    if types == (bool,):
        return {**kw, "action": argparse.BooleanOptionalAction}
    if bool in types:
        kw.update(nargs="?", const=True, type=str)
    else:
        kw["type"] = next(t for t in types if t is not type(None))
    if meta["choices"]:
        kw["choices"] = meta["choices"]
    if meta["metavar"]:
        kw["metavar"] = meta["metavar"]
    return kw


def _help(f) -> str:
    """The field's help, with its default unless the text already says it ("default: ...")."""
    text = f.metadata["help"]
    if "default:" in text or f.default is None:
        return text
    shown = ("on" if f.default else "off") if isinstance(f.default, bool) else "%(default)s"
    return f"{text} (default: {shown})"


def config_from_args(args, **overrides) -> dict:
    """The `TrainConfig` fields the parsed options give (those left unset, None, are left out:
    the config's default applies)."""
    from ..config import FIELDS

    from ..feedback import parse_options

    cfg = {f.name: getattr(args, f.name, None) for f in FIELDS}
    if getattr(args, "scheme_option", None):  # given: in the config (and the run key)
        cfg["scheme_options"] = parse_options(args.scheme_option)
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not None}


def epoch_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']:>3}", f"lr {row['lr']:.2e}", f"loss {row['train_loss']:.4f}",
             f"train {row['train_error']:6.2f}%", f"test {row['test_error']:6.2f}%"]
    if "val_error" in row:
        parts.append(f"val {row['val_error']:6.2f}%")
    if row.get("alignment"):
        mean_angle = sum(a["angle"] for a in row["alignment"]) / len(row["alignment"])
        parts.append(f"V-W {mean_angle:5.1f}deg")
    parts.append(f"{row['seconds']:.1f}s")
    if row.get("diverged"):
        parts.append("DIVERGED")
    return "  ".join(parts)


def _argv_without_nproc(args) -> list[str]:
    """This `asymbp run` command line, rebuilt from the parsed options, for each process."""
    from ..config import field_types

    argv = ["run"]
    for key, value in config_from_args(args).items():
        flag = _flag(key)
        if key == "scheme_options":
            argv += [a for k, v in value.items() for a in ("--scheme-option", f"{k}={v}")]
        elif field_types()[key] == (bool,):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, bool):  # a switch with an optional value: on or off
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    for key in ("checkpoint", "threads"):
        if getattr(args, key) is not None:
            argv += ["--" + key, str(getattr(args, key))]
    argv += ["--json"] if args.json else []
    argv += ["--no-progress"] if args.no_progress else []
    return argv


def run(args) -> int:
    import torch

    from .. import data as datasets
    from .. import models
    from ..config import TrainConfig, check_config
    from ..distributed import local_device
    from ..hardware import bf16_note
    from ..store import json_safe
    from ..train import honest_split, resized_shape, train

    rank0 = int(os.environ.get("RANK", "0")) == 0  # data parallel: rank 0 speaks for the run
    if args.nproc is not None and args.nproc < 1:
        raise AsymbpError(f"--nproc must be >= 1, got {args.nproc}; 1 runs in this process")
    if args.nproc is not None and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from ..distributed import launch

        cfg = TrainConfig.from_dict(config_from_args(args))
        check_config(cfg)
        local_device(cfg.device)  # a device this machine lacks: one line, no processes
        return launch(args.nproc, _argv_without_nproc(args))
    if args.threads is not None:
        if args.threads < 1:
            raise AsymbpError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    cfg = TrainConfig.from_dict(config_from_args(args))
    check_config(cfg)  # every user mistake fails here, before data or a file is touched
    local_device(cfg.device)  # so does a device this machine does not have
    # Load (and validate) the data before the progress bar starts, so that a bad dataset, or a
    # network that cannot take its inputs, is one line on stderr, not a bar and a traceback.
    ds = datasets.load(cfg.dataset, cfg.data_dir, seed=cfg.data_seed, synthetic=cfg.synthetic)
    models.check_fit(cfg.model or ds.model, resized_shape(ds.input_shape, cfg.resize),
                     cfg.dataset)
    honest_split(cfg, ds)  # an honest split that leaves nothing to train on
    bar = None

    def on_start(run):
        # Once train() has checked everything (a bad checkpoint is still one line on stderr,
        # nothing before it): the device, a note, the bar. Rank 0 only.
        nonlocal bar
        if not args.json:  # the JSON result says it as "device"
            given = f" ({cfg.device})" if cfg.device != run["device"] else ""
            print(f"device: {run['device']}{given}", file=sys.stderr, flush=True)
        if note := bf16_note(cfg.amp, run["device"]):
            print(note, file=sys.stderr, flush=True)
        if not args.no_progress and not args.json:
            from tqdm import tqdm

            bar = tqdm(total=cfg.epochs, initial=run["first_epoch"] - 1, unit="epoch",
                       desc=f"{cfg.method} on {cfg.dataset}", file=sys.stderr, leave=False)

    def on_epoch(row):
        if bar is not None:
            bar.update(1)
            bar.write(epoch_line(row), file=sys.stdout)
        elif not args.json:
            print(epoch_line(row), flush=True)

    result = train(cfg, on_epoch=on_epoch, checkpoint=args.checkpoint, data=ds,
                   on_start=on_start)
    if bar is not None:
        bar.close()
    if not rank0:
        return 0  # data parallel: rank 0 prints the run
    if args.json:
        print(json.dumps(json_safe(result)))
    else:
        status = f"DIVERGED at epoch {result['diverged_epoch']}" if result["diverged"] else "done"
        print(f"{result['method']} on {cfg.dataset}: final test error "
              f"{result['test_error']:.2f}%, best {result['best_test_error']:.2f}% "
              f"(epoch {result['best_epoch']}), {status}, {result['seconds']:.1f}s")
    return 0
