"""Runs per hour of one sweep cell (a method x 5 learning-rate multipliers) three ways:

- `packed`: the five runs as one packed model (`asymbp.packed.train_packed`), this process;
- `one-by-one`: `train()` on each run in turn, this process, the same threads;
- `workers`: `train_many` with W worker processes of threads / W threads each (start-up
  included).

Each way runs `--repeats` times, interleaved (packed, one-by-one, workers, packed, ...), so a
shared machine's load falls on all of them alike; the best repeat is reported. Achieved FLOP/s
(FlopCounterMode over one epoch of one run, times the run-epochs done) is shown as a fraction of
a large matmul timed in this process. The data is CIFAR-10's shapes (`--synthetic N` examples:
N training and N test images), so the numbers time the recipe, not learning; runs/hour are of
the paper's 65-epoch runs on the full 50 000 training images (a run-epoch here x 50 000 / N;
the 10 000 test images are over-counted by the same factor, an upper bound on the time).
The projection of Experiment A on CIFAR-10 multiplies the cell's measured time per run by the
experiment's run count (its columns x 5 multipliers, +5 for uSF+BM's second procedure): the
method timed stands for every column (BN columns cost a little more, BP ones a little less).

    python benchmarks/pack_time.py --threads 2                     # CPU, uSF+BN, cifar network
    python benchmarks/pack_time.py --device cuda --method SGD --synthetic 5000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from step_time import matmul_peak, sync  # noqa: E402

from asymbp import data as datasets  # noqa: E402
from asymbp.packed import train_packed  # noqa: E402
from asymbp.sweep import LR_MULTS, plan, train_many  # noqa: E402
from asymbp.train import train  # noqa: E402

FULL_TRAIN, FULL_EPOCHS = 50_000, 65


def configs(args) -> list[dict]:
    # one seed (Experiment A's cells): the copies share each batch; --distinct-seeds: each copy
    # its own batches, stacked along channels (every conv grouped)
    return [dict(dataset="cifar10", synthetic=args.synthetic, model="cifar", method=args.method,
                 epochs=args.epochs, lr_mult=k, seed=1 + i * args.distinct_seeds,
                 device=args.device) for i, k in enumerate(LR_MULTS)]


def run_epoch_flops(config: dict, data) -> int:
    with FlopCounterMode(display=False) as counter:
        train({**config, "epochs": 1}, data=data)
    return counter.get_total_flops()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--method", default="uSF+BN")
    p.add_argument("--synthetic", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--distinct-seeds", action="store_true",
                   help="seeds 1-5 instead of seed 1 for every run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = datasets.load("cifar10", None, synthetic=args.synthetic)
    cell = configs(args)
    peak = matmul_peak(device)
    flops = run_epoch_flops(cell[2], data)
    ways = {
        "packed": lambda: train_packed(cell, data=data),
        "one-by-one": lambda: [train(c, data=data) for c in cell],
        f"{args.workers} workers": lambda: train_many(
            cell, workers=args.workers, threads=max(1, args.threads // args.workers), data=data),
    }
    if device.type == "cuda":  # workers on one GPU: each its own CUDA context
        ways.pop(f"{args.workers} workers")
    ways["packed"]()  # warm-up (kernels, allocator)
    best = {w: float("inf") for w in ways}
    for _ in range(args.repeats):
        for w, fn in ways.items():
            best[w] = min(best[w], timed(fn, device))
    run_epochs = len(cell) * args.epochs
    scale = FULL_TRAIN / args.synthetic
    n_runs = len(plan("A", datasets=["cifar10"]))
    print(f"cell: {args.method}, cifar network, CIFAR-10 shapes ({args.synthetic} synthetic "
          f"images), {len(cell)} runs x {args.epochs} epochs, {args.threads} threads, "
          f"{device}, {'seeds 1-5' if args.distinct_seeds else 'one seed'}; matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s; one run-epoch {flops / 1e9:.2f} GFLOP")
    print(f"| way | wall s | s / run-epoch | runs/hour (65 ep, 50k) | x one-by-one | "
          f"FLOP/s of peak | Experiment A ({n_runs} runs) |")
    print("|---|---|---|---|---|---|---|")
    base = best["one-by-one"]
    for w, wall in best.items():
        per = wall / run_epochs
        run_h = per * scale * FULL_EPOCHS / 3600
        print(f"| {w} | {wall:.2f} | {per:.3f} | {1 / run_h:.2f} | {base / wall:.2f}x | "
              f"{flops * run_epochs / wall / peak:.1%} | {n_runs * run_h:.0f} h |")


if __name__ == "__main__":
    main()
