"""Runs per hour for one cell (a method × the 5 learning-rate multipliers): sequential runs vs
concurrent workers (`asymbp.sweep.train_many`) vs one grouped ("batched") model.

- `sequential`: the five runs one after another in this process, all threads.
- `WxT`: W worker processes with T threads each (train_many); wall time includes starting the
  workers. `steady` runs/hour leaves out start-up and the tail (W / the mean epoch time seen by
  the runs while they share the machine), which is what a long sweep of many cells achieves.
- `grouped`: the runs concatenated along channels into one model (grouped convolutions, bmm for
  the fully connected layers), plain backprop, training steps only, against the same five steps
  run one after another with the same threads: the measurement that decided for workers.

Achieved FLOP/s (FlopCounterMode over one epoch of one run × the run-epochs done) is shown as a
fraction of the peak of a large matmul timed in this process.

    python benchmarks/sweep_time.py                                  # mnist5k, uSF+BN+BM, CPU
    python benchmarks/sweep_time.py --layouts 2x1,1x2 --epochs 5
    python benchmarks/sweep_time.py --device cuda --layouts 5x1,2x1
    python benchmarks/sweep_time.py --experiment A --layouts 2x1 --channels-last   # projection

`--experiment A` times one run of every (method, procedure) of the experiment instead of one
cell (lr multiplier 0.1, which none of them diverges at) and projects the experiment's wall
time on this machine: the sum over its runs of 65 × that method's steady epoch time, divided by
the workers. Runs that diverge early in the real sweep make the real time shorter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from step_time import matmul_peak, sync

from asymbp import data as datasets
from asymbp.config import TrainConfig
from asymbp.sweep import LR_MULTS, cell, train_many
from asymbp.train import train

FULL_EPOCHS = TrainConfig().epochs  # runs/hour are of the paper's 65-epoch runs


def run_flops(config: dict, data) -> int:
    """FLOPs of one epoch of one run."""
    with FlopCounterMode(display=False) as counter:
        train({**config, "epochs": 1}, data=data)
    return counter.get_total_flops()


def time_layout(name: str, configs: list[dict], data, workers: int, threads: int,
                epoch_flops: int, peak: float) -> dict:
    t = time.perf_counter()
    results = train_many(configs, workers=workers, threads=threads, data=data)
    wall = time.perf_counter() - t
    epochs = sum(len(r["epochs"]) for r in results)
    # Steady state: the later epochs of every run (the first pays warm-up), `workers` at a time.
    later = [e["seconds"] for r in results for e in r["epochs"][1:]] or \
        [e["seconds"] for r in results for e in r["epochs"]]
    per_run_epoch = statistics.mean(later) / max(1, workers)
    return {"layout": name, "workers": workers, "threads": threads, "runs": len(configs),
            "epochs_per_run": epochs // len(configs), "wall_s": wall,
            "runs_per_hour": 3600 * len(configs) / (wall * FULL_EPOCHS * len(configs) / epochs),
            "steady_run_epoch_s": per_run_epoch,
            "steady_runs_per_hour": 3600 / (per_run_epoch * FULL_EPOCHS),
            "peak_fraction": epoch_flops * epochs / wall / peak,
            "steady_peak_fraction": epoch_flops / per_run_epoch / peak}


# ---- the grouped-model prototype (steps only, plain backprop, mnist network) ---------------


class GroupedMnist(nn.Module):
    """R copies of the Table-1 mnist network as one model: runs along the channel axis."""

    def __init__(self, R: int, bn: bool = True):
        super().__init__()
        norm2 = (lambda c: nn.BatchNorm2d(c, affine=False)) if bn else (lambda c: nn.Identity())
        self.R = R
        self.features = nn.Sequential(
            nn.Conv2d(1, 20 * R, 5), norm2(20 * R), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20 * R, 50 * R, 5, groups=R), norm2(50 * R), nn.ReLU(), nn.MaxPool2d(2))
        self.w1 = nn.Parameter(torch.randn(R, 800, 500) * 800 ** -0.5)
        self.b1 = nn.Parameter(torch.zeros(R, 1, 500))
        self.bn1 = nn.BatchNorm1d(500 * R, affine=False) if bn else nn.Identity()
        self.w2 = nn.Parameter(torch.randn(R, 500, 10) * 500 ** -0.5)
        self.b2 = nn.Parameter(torch.zeros(R, 1, 10))

    def forward(self, x):
        h = self.features(x)  # (N, R·50, 4, 4)
        N, R = h.shape[0], self.R
        h = h.reshape(N, R, 800).transpose(0, 1)  # (R, N, 800)
        h = torch.baddbmm(self.b1, h, self.w1)  # (R, N, 500)
        h = self.bn1(h.transpose(0, 1).reshape(N, R * 500)).reshape(N, R, 500).transpose(0, 1)
        return torch.baddbmm(self.b2, F.relu(h), self.w2)  # (R, N, 10)


def grouped_vs_sequential_steps(R: int, device, threads: int, repeats: int = 7) -> dict:
    import asymbp

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(100, 1, 28, 28, device=device)
        y = torch.randint(0, 10, (100,), device=device)
        singles = [asymbp.models.build("mnist", 10, bn=True).to(device) for _ in range(R)]
        grouped = GroupedMnist(R).to(device)

        def stepper(model, loss_of):
            opt = asymbp.optim.SGD(model.parameters(), lr=1e-5)

            def step():
                loss = loss_of(model(x))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return step

        single_steps = [stepper(m, lambda o: F.cross_entropy(o, y, reduction="sum"))
                        for m in singles]
        yR = y.repeat(R)
        grouped_step = stepper(grouped, lambda o: F.cross_entropy(o.reshape(-1, 10), yR,
                                                                 reduction="sum"))

        def sequential():
            for s in single_steps:
                s()

        def timed(fn):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            return time.perf_counter() - t

        for _ in range(3):
            sequential(), grouped_step()
        seq = statistics.median(timed(sequential) for _ in range(repeats))
        grp = statistics.median(timed(grouped_step) for _ in range(repeats))
    finally:
        torch.set_num_threads(old)
    return {"runs": R, "threads": threads, "sequential_ms": seq * 1e3, "grouped_ms": grp * 1e3,
            "speedup": seq / grp}


def synthetic_like(key: str):
    """Random data of dataset `key`'s network shapes and sizes (per-class sizes: C × n)."""
    from epoch_time import synthetic

    info = datasets.DATASETS[key]

    def size(text: str) -> int:
        n = int("".join(ch for ch in text if ch.isdigit()) or 0)
        return n * (info.classes or 1) if "/class" in text else (n or 1000)

    ds = synthetic(info.model, size(info.train), size(info.test))
    return datasets.Dataset(key, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes,
                            info.model)


def project_experiment(key: str, args, data, peak: float) -> dict:
    from asymbp.sweep import plan

    runs = plan(key, datasets=[args.dataset])
    shapes: dict[tuple, list] = {}  # (method, procedure) -> its runs
    for r in runs:
        shapes.setdefault((r.method, r.procedure), []).append(r)
    w, t = (int(v) for v in args.layouts.split(",")[0].lower().split("x"))
    configs = [{**rs[0].config, "lr_mult": 0.1, "epochs": args.epochs, "device": args.device,
                "channels_last": args.channels_last, "amp": args.amp} for rs in shapes.values()]
    start = time.perf_counter()
    results = train_many(configs, workers=w, threads=t, data=data)
    wall = time.perf_counter() - start
    rows, total = [], 0.0
    for (method, proc), rs, res in zip(shapes, shapes.values(), results):
        epoch_s = statistics.median(e["seconds"] for e in res["epochs"][1:])
        total += len(rs) * FULL_EPOCHS * epoch_s / w
        rows.append({"method": method, "procedure": proc, "runs": len(rs), "epoch_s": epoch_s,
                     "diverged": res["diverged"]})
    flops = sum(len(rs) for rs in shapes.values()) * FULL_EPOCHS * run_flops(configs[0], data)
    return {"experiment": key, "runs": len(runs), "layout": f"{w}x{t}", "rows": rows,
            "measured_wall_s": wall, "projected_s": total,
            "projected_peak_fraction_sgd_flops": flops / total / peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--method", default="uSF+BN+BM")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (scaled to 65)")
    p.add_argument("--layouts", default="sequential,2x1",
                   help="comma-separated: sequential and/or WxT (W workers, T threads each)")
    p.add_argument("--no-grouped", action="store_true", help="skip the grouped-model prototype")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC images, as train() does by default (default: on)")
    p.add_argument("--amp", choices=["fp32", "bf16"], default="fp32",
                   help="precision of the runs (bf16: autocast; default: %(default)s)")
    p.add_argument("--experiment", default=None,
                   help="project this experiment's wall time (e.g. A) instead of timing a cell")
    p.add_argument("--synthetic", action="store_true",
                   help="random data of the dataset's shapes and sizes instead of its files "
                        "(e.g. --dataset cifar10 on a machine without the CIFAR-10 files)")
    p.add_argument("--out", default=str(Path(__file__).with_name("sweep_time.json")))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cpus = os.cpu_count() or 1
    data = synthetic_like(args.dataset) if args.synthetic else datasets.load(args.dataset)
    configs = cell(args.method, args.dataset, seeds=[1], lr_mults=LR_MULTS, epochs=args.epochs,
                   device=args.device, channels_last=args.channels_last, amp=args.amp)
    peak = matmul_peak(device)
    if args.experiment:
        proj = project_experiment(args.experiment, args, data, peak)
        print(f"device {device}, torch {torch.__version__}, {cpus} CPUs, matmul peak "
              f"{peak / 1e9:.1f} GFLOP/s; Experiment {args.experiment} on {args.dataset}, "
              f"{proj['runs']} runs, layout {proj['layout']}, channels_last "
              f"{args.channels_last}, {args.amp}\n\n{'method':<13} {'procedure':<16} {'runs':>4} "
              f"{'epoch s':>8}")
        for r in proj["rows"]:
            print(f"{r['method']:<13} {r['procedure']:<16} {r['runs']:>4} {r['epoch_s']:8.3f}")
        print(f"\nprojected wall time of the experiment: {proj['projected_s'] / 60:.1f} min "
              f"({proj['projected_peak_fraction_sgd_flops'] * 100:.0f}% of the matmul peak at "
              f"the first method's FLOPs per epoch); this measurement took "
              f"{proj['measured_wall_s']:.0f}s")
        Path(args.out).write_text(json.dumps({"device": str(device), "cpus": cpus,
                                              "matmul_peak_flops": peak, "args": vars(args),
                                              **proj}, indent=1))
        print(f"wrote {args.out}")
        return 0
    flops = run_flops(configs[2], data)
    print(f"device {device}, torch {torch.__version__}, {cpus} CPUs, matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s; cell {args.method} on {args.dataset} (5 lr multipliers, "
          f"{args.epochs} epochs each, {flops / 1e9:.1f} GFLOP per run-epoch)")
    rows = []
    for layout in args.layouts.split(","):
        if layout == "sequential":
            w, t = 0, cpus
        else:
            w, t = (int(v) for v in layout.lower().split("x"))
        rows.append(time_layout(layout, configs, data, w, t, flops, peak))
        r = rows[-1]
        print(f"  {layout:<11} wall {r['wall_s']:7.1f}s", flush=True)
    print(f"\n{'layout':<11} {'wall s':>7} {'runs/h':>7} {'%peak':>6} {'steady s/run-ep':>16} "
          f"{'steady runs/h':>14} {'%peak':>6}")
    for r in rows:
        print(f"{r['layout']:<11} {r['wall_s']:7.1f} {r['runs_per_hour']:7.1f} "
              f"{100 * r['peak_fraction']:5.1f}% {r['steady_run_epoch_s']:16.3f} "
              f"{r['steady_runs_per_hour']:14.1f} {100 * r['steady_peak_fraction']:5.1f}%")
    grouped = []
    if not args.no_grouped:
        print("\ngrouped model (5 runs in one, BP, training steps only) vs 5 sequential steps:")
        for threads in sorted({1, cpus}):
            g = grouped_vs_sequential_steps(len(LR_MULTS), device, threads)
            grouped.append(g)
            print(f"  threads {threads}: sequential {g['sequential_ms']:.1f} ms, grouped "
                  f"{g['grouped_ms']:.1f} ms, speedup {g['speedup']:.2f}x")
    Path(args.out).write_text(json.dumps({
        "device": str(device), "torch": torch.__version__, "cpus": cpus,
        "matmul_peak_flops": peak, "flops_per_run_epoch": flops, "args": vars(args),
        "rows": rows, "grouped": grouped}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
