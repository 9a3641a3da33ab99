"""Projected wall time of Li & Benna's full experiments on this machine, from measured times.

MNIST (pfa-mnist, pfa-mnist-sparse): one epoch of each column on mnist5k's 4 000 real training
digits (its config, with the per-epoch alignment measures; the first epoch, warm-up, dropped),
timed here, scaled to 60 000 digits, x 40 epochs x 5 seeds. (`--db`: also print the epoch times
a sweep stored, which on a shared machine include whatever else was running.) CIFAR-10
(pfa-cifar10): one ResNet-20 training step at batch 128 per column, timed here with the
experiment's own cell config (synthetic images of CIFAR's shape: the speed does not depend on
the pixels), x 352 steps (45 000 / 128) x 250 epochs x 5 seeds; evaluation is left out (a few
percent).

    python benchmarks/pfa_projection.py --threads 1 [--db /work/results/pfa.db]

Everything is one process on `--threads` torch threads; a sweep with W workers divides the
total by about W when the machine has W x threads free cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from asymbp import store  # noqa: E402
from asymbp.data import Dataset  # noqa: E402
from asymbp.sweep.plan import EXPERIMENTS  # noqa: E402
from asymbp.train import train  # noqa: E402

SEEDS, MNIST_TRAIN, MNIST_EPOCHS = 5, 60_000, 40
CIFAR_TRAIN, CIFAR_BATCH, CIFAR_EPOCHS = 45_000, 128, 250


def cifar_step_seconds(column: str, steps: int, repeats: int) -> float:
    """Median seconds of one ResNet-20 step of pfa-cifar10's `column` (its config, epochs of
    `steps` steps on synthetic CIFAR-shaped data; the first epoch, warm-up, dropped)."""
    rng = np.random.default_rng(0)
    n = steps * CIFAR_BATCH
    x = rng.normal(size=(n + CIFAR_BATCH, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=n + CIFAR_BATCH)
    ds = Dataset("cifar10", x[:n], y[:n], x[n:], y[n:], 10, "resnet20")
    cfg = EXPERIMENTS["pfa-cifar10"].config(column, "ResNet-20 SGD")
    cfg.update(epochs=repeats + 1, protocol="paper", val_size=None, alignment=False,
               lr_milestones=None, device="cpu")
    epochs = train(cfg, data=ds)["epochs"][1:]
    return statistics.median(e["seconds"] for e in epochs) / steps


def mnist_epoch_seconds(experiment: str, column: str, ds, repeats: int) -> float:
    """Median seconds of one mnist5k epoch of `column` (the first epoch, warm-up, dropped)."""
    cfg = EXPERIMENTS[experiment].config(column, "mnist")
    cfg.update(dataset="mnist5k", epochs=repeats + 1, lr_milestones=None, device="cpu")
    return statistics.median(e["seconds"] for e in train(cfg, data=ds)["epochs"][1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default=None, help="a database with pfa-mnist(-sparse) runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=4, help="ResNet-20 steps per timed epoch")
    p.add_argument("--repeats", type=int, default=1, help="timed epochs per column")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from asymbp import data

    mnist5k = data.load("mnist5k")
    stored = None
    if args.db:
        runs = store.load(args.db)
        runs = runs[runs["status"] == "done"]
        stored = (runs["seconds"] / runs["config"].map(lambda c: c.get("epochs"))).groupby(
            [runs["experiment"], runs["method"]]).median()
    total_h = {}
    for exp in ("pfa-mnist", "pfa-mnist-sparse"):
        print(f"{exp}: seconds per mnist5k epoch, measured here -> the full protocol")
        hours = 0.0
        for m in EXPERIMENTS[exp].columns:
            s = mnist_epoch_seconds(exp, m, mnist5k, args.repeats)
            full = s * MNIST_TRAIN / len(mnist5k.y_train) * MNIST_EPOCHS * SEEDS
            hours += full / 3600
            was = ("" if stored is None or (exp, m) not in stored.index
                   else f"  (stored by the sweep: {stored[(exp, m)]:.2f} s/epoch)")
            print(f"  {m:<12} {s:6.2f} s/epoch -> {full / 3600:6.2f} h for 5 x 40 epochs{was}",
                  flush=True)
        total_h[exp] = hours
        print(f"  total {hours:.1f} h of one worker")
    steps = CIFAR_TRAIN // CIFAR_BATCH + 1
    cifar = 0.0
    print(f"pfa-cifar10: ResNet-20, batch {CIFAR_BATCH}, {args.threads} thread(s)")
    for col in EXPERIMENTS["pfa-cifar10"].columns:
        s = cifar_step_seconds(col, args.steps, args.repeats)
        full = s * steps * CIFAR_EPOCHS * SEEDS
        cifar += full
        print(f"  {col:<6} {s * 1000:8.1f} ms/step -> {full / 3600:8.1f} h for 5 x 250 epochs",
              flush=True)
    total_h["pfa-cifar10"] = cifar / 3600
    print(f"  total {cifar / 3600:.0f} h of one worker ({cifar / 86400:.1f} days)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
