"""Projected wall time of Li & Benna's full experiments on this machine, from measured times.

MNIST (pfa-mnist, pfa-mnist-sparse): the per-epoch training time of each column as stored by a
short sweep on mnist5k (`--db`: the runs' seconds / epochs, 4 000 training digits), scaled to
60 000 digits, x 40 epochs x 5 seeds. CIFAR-10 (pfa-cifar10): one ResNet-20 training step at
batch 128 per column, timed here with the experiment's own cell config (synthetic images of
CIFAR's shape: the speed does not depend on the pixels), x 352 steps (45 000 / 128) x 250
epochs x 5 seeds; evaluation is left out (a few percent).

    python benchmarks/pfa_projection.py --db /work/results/pfa.db --threads 1

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True, help="a database with pfa-mnist(-sparse) runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=4, help="ResNet-20 steps per timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per column")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    runs = store.load(args.db)
    runs = runs[runs["status"] == "done"]
    total_h = {}
    for exp in ("pfa-mnist", "pfa-mnist-sparse"):
        r = runs[runs["experiment"] == exp]
        if not len(r):
            continue
        n_epochs = r["config"].map(lambda c: c.get("epochs"))
        per_epoch = (r["seconds"] / n_epochs).groupby(r["method"]).median()
        scale = MNIST_TRAIN / 4000
        full = per_epoch * scale * MNIST_EPOCHS * SEEDS
        print(f"{exp}: seconds per mnist5k epoch (median over its runs) -> full protocol")
        for m, s in per_epoch.items():
            print(f"  {m:<12} {s:6.2f} s/epoch -> {full[m] / 3600:6.2f} h for 5 x 40 epochs")
        total_h[exp] = full.sum() / 3600
        print(f"  total {total_h[exp]:.1f} h of one worker")
    steps = CIFAR_TRAIN // CIFAR_BATCH + 1
    cifar = 0.0
    print(f"pfa-cifar10: ResNet-20, batch {CIFAR_BATCH}, {args.threads} thread(s)")
    for col in EXPERIMENTS["pfa-cifar10"].columns:
        s = cifar_step_seconds(col, args.steps, args.repeats)
        full = s * steps * CIFAR_EPOCHS * SEEDS
        cifar += full
        print(f"  {col:<6} {s * 1000:8.1f} ms/step -> {full / 3600:8.1f} h for 5 x 250 epochs")
    total_h["pfa-cifar10"] = cifar / 3600
    print(f"  total {cifar / 3600:.0f} h of one worker ({cifar / 86400:.1f} days)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
