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


def add_run_options(p, single: bool = True) -> None:
    """The options that define a run (shared with `asymbp sweep`)."""
    from ..config import COMPILE_MODES, TrainConfig

    d = TrainConfig()
    if single:
        p.add_argument("--dataset", default=d.dataset,
                       help="dataset key (see 'asymbp datasets') or npz:PATH (default: %(default)s)")
        p.add_argument("--method", default=d.method,
                       help="method string, e.g. SGD, uSF+BN+BM, brSF-25+BN+BM, RndF+BN "
                            "(see 'asymbp methods'; default: %(default)s)")
        p.add_argument("--lr-mult", type=float, default=d.lr_mult, metavar="K",
                       help="learning-rate multiplier k: lr = 5e-4 x k (default: %(default)s)")
        p.add_argument("--seed", type=int, default=d.seed,
                       help="seed of the initialisation, batch order and feedback draws "
                            "(default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="network key (mnist, cifar, svhn, large, mlp, resnet20, resnet18); "
                        "default: the dataset's Table-1 network")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="epochs; the lr schedule (base, /10 after 50/65, /100 after 60/65) "
                        "scales to it (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="mini-batch size (default: %(default)s)")
    p.add_argument("--batch-schedule", default=None, metavar="SPEC",
                   help="batch-size schedule, e.g. '100:3,500' = 100 for 3 epochs then 500")
    p.add_argument("--base-lr", type=float, default=d.base_lr,
                   help="base learning rate before the multiplier (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="weight decay d (default: %(default)s, MatConvNet's)")
    p.add_argument("--momentum", type=float, default=d.momentum,
                   help="momentum m (default: %(default)s)")
    p.add_argument("--feedback-weight-decay", default=None, metavar="FIRST,AFTER",
                   help="weight decay of learned feedback (KP, PFA): first epoch, then after, "
                        "e.g. 5e-3,1e-4")
    p.add_argument("--protocol", choices=["paper", "honest"], default=d.protocol,
                   help="paper: best test error over epochs; honest: a validation split picks "
                        "the epoch (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="validation share of the training set, honest protocol "
                        "(default: %(default)s)")
    p.add_argument("--freeze", choices=["none", "bottom", "top"], default=d.freeze,
                   help="Experiment C2: bottom = last layer random and frozen, top = all but "
                        "the last (default: %(default)s)")
    p.add_argument("--bn-stats", choices=["paper", "running"], default=d.bn_stats,
                   help="test-time BN statistics: paper (20 batches after each epoch, EMA 0.05) "
                        "or running averages (default: %(default)s)")
    p.add_argument("--bn-stat-batches", type=int, default=d.bn_stat_batches, metavar="N",
                   help="training batches of the paper's post-epoch BN-statistics pass "
                        "(default: %(default)s)")
    p.add_argument("--data-seed", type=int, default=d.data_seed, metavar="SEED",
                   help="seed of the sampled classes and splits of the paper's datasets and of "
                        "the honest validation split (default: %(default)s)")
    p.add_argument("--device", default=d.device,
                   help="torch device: auto, cpu, cuda, cuda:1, mps (default: %(default)s: "
                        "CUDA when there is a GPU, else the CPU); in a sweep a bare 'cuda' or "
                        "'auto' spreads the workers over the visible GPUs")
    p.add_argument("--amp", choices=["fp32", "bf16"], default=d.amp,
                   help="precision: bf16 autocast or fp32 (default: %(default)s)")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the model; MODE: " + ", ".join(COMPILE_MODES)
                        + " (reduce-overhead adds CUDA graphs on a GPU; default: default)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   default=d.channels_last,
                   help="NHWC memory format for images: faster convolutions on CPU, the same "
                        "math (default: on)")
    p.add_argument("--mirror-every", type=int, default=d.mirror_every, metavar="N",
                   help="WM (weight mirrors): mirror steps after every N training steps "
                        "(default: %(default)s)")
    p.add_argument("--mirror-steps", type=int, default=d.mirror_steps, metavar="N",
                   help="WM: mirror steps each time (default: %(default)s)")
    p.add_argument("--mirror-warmup", type=int, default=d.mirror_warmup, metavar="N",
                   help="WM: mirror steps before the first training step (default: %(default)s)")
    p.add_argument("--no-alignment", action="store_true",
                   help="skip the per-epoch V-W and error-signal angles")
    p.add_argument("--data-dir", default=None,
                   help="data root (default: $ASYMBP_DATA or ~/.cache/asymbp)")


def config_from_args(args, **overrides) -> dict:
    cfg = {
        "dataset": getattr(args, "dataset", None), "method": getattr(args, "method", None),
        "lr_mult": getattr(args, "lr_mult", None), "seed": getattr(args, "seed", None),
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
        "batch_schedule": args.batch_schedule, "base_lr": args.base_lr,
        "weight_decay": args.weight_decay, "momentum": args.momentum,
        "feedback_weight_decay": args.feedback_weight_decay, "protocol": args.protocol,
        "val_fraction": args.val_fraction, "freeze": args.freeze, "bn_stats": args.bn_stats,
        "device": args.device, "amp": args.amp, "compile": args.compile,
        "alignment": not args.no_alignment, "data_dir": args.data_dir,
        "channels_last": getattr(args, "channels_last", None),
        "bn_stat_batches": getattr(args, "bn_stat_batches", None),
        "data_seed": getattr(args, "data_seed", None),
        "mirror_every": getattr(args, "mirror_every", None),
        "mirror_steps": getattr(args, "mirror_steps", None),
        "mirror_warmup": getattr(args, "mirror_warmup", None),
    }
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
    argv = ["run"]
    for key, value in config_from_args(args).items():
        flag = "--" + key.replace("_", "-")
        if key == "alignment":
            argv += [] if value else ["--no-alignment"]
        elif isinstance(value, bool):
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
    from ..distributed import local_device
    from ..hardware import bf16_note
    from ..store import json_safe
    from ..train import TrainConfig, check_config, train

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
    device = local_device(cfg.device)  # so does a device this machine does not have
    # Load (and validate) the data before the progress bar starts, so that a bad dataset, or a
    # network that cannot take its inputs, is one line on stderr, not a bar and a traceback.
    ds = datasets.load(cfg.dataset, cfg.data_dir, seed=cfg.data_seed)
    models.check_fit(cfg.model or ds.model, ds.input_shape, cfg.dataset)
    if rank0:
        if not args.json:  # the JSON result says it as "device"
            given = f" ({cfg.device})" if cfg.device != device else ""
            print(f"device: {device}{given}", file=sys.stderr, flush=True)
        if note := bf16_note(cfg.amp, device):
            print(note, file=sys.stderr, flush=True)
    bar = None
    if not args.no_progress and not args.json and rank0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, desc=f"{cfg.method} on {cfg.dataset}", unit="epoch",
                   file=sys.stderr, leave=False)

    def on_epoch(row):
        if bar is not None:
            bar.update(1)
            bar.write(epoch_line(row), file=sys.stdout)
        elif not args.json:
            print(epoch_line(row), flush=True)

    result = train(cfg, on_epoch=on_epoch, checkpoint=args.checkpoint, data=ds)
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
