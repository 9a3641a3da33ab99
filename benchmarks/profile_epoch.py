"""Where the time of a training epoch goes: by phase and by kind of operation.

Phases: the mini-batch steps, the paper's BN-statistics pass, evaluation on the test set and
the alignment metrics (timed by wrapping the recipe's public steps `refresh_bn_stats`,
`error_rate` and `epoch_alignment` of `asymbp.train`, which `train()` looks up as it runs).
Operations: torch's profiler over the same epochs, its self times summed into kinds
(convolution forward and backward, matmul, batch norm, pooling, ReLU, the optimizer, feedback
weights, copies, other), each with its share and, for the kinds that do FLOPs, the FLOPs the
network needs for them.
Synthetic data of the real shapes, as in epoch_time.py.

    python benchmarks/profile_epoch.py                          # mnist, uSF+BN+BM, 1 thread
    python benchmarks/profile_epoch.py --network cifar --method SGD --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from epoch_time import add_workload_args, workload

import asymbp.train as T

# op name (substring) -> kind; the first match wins
KINDS = [
    ("convolution_backward", "conv backward"),
    ("convolution", "conv forward"),
    ("mkldnn_conv", "conv forward"),
    ("cudnn_conv", "conv forward"),
    ("batch_norm", "batch norm"),
    ("max_pool", "pooling"),
    ("avg_pool", "pooling"),
    ("threshold_backward", "ReLU"),
    ("clamp_min", "ReLU"),
    ("relu", "ReLU"),
    ("addmm", "matmul"),
    ("aten::mm", "matmul"),
    ("bmm", "matmul"),
    ("Optimizer", "optimizer"),
    ("_foreach", "optimizer"),
    ("copysign", "feedback V"),
    ("aten::sign", "optimizer"),  # Batch Manhattan's sign(g)
    ("rand", "feedback V"),
    ("copy_", "copies"),
    ("contiguous", "copies"),
    ("fill_", "copies"),
]


def kind_of(name: str) -> str:
    for pattern, kind in KINDS:
        if pattern in name:
            return kind
    return "other"


def timed(fn, bucket: dict, key: str):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[key] += time.perf_counter() - t0

    return wrapper


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(p, 2, "profiled epochs (after one warm-up)")
    p.add_argument("--out", default=str(Path(__file__).with_name("profile_epoch.json")))
    args = p.parse_args(argv)
    data, config = workload(args)
    T.train({**config, "epochs": 1}, data=data)  # warm-up

    phases: dict[str, float] = defaultdict(float)
    saved = T.refresh_bn_stats, T.error_rate, T.epoch_alignment
    T.refresh_bn_stats = timed(saved[0], phases, "BN-statistics pass")
    T.error_rate = timed(saved[1], phases, "evaluation")
    T.epoch_alignment = timed(saved[2], phases, "alignment metrics")
    try:
        activities = [ProfilerActivity.CPU]
        if args.device.startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            result = T.train({**config, "epochs": args.epochs}, data=data)
    finally:
        T.refresh_bn_stats, T.error_rate, T.epoch_alignment = saved
    total = sum(e["seconds"] for e in result["epochs"])
    phases = {"mini-batch steps": total - sum(phases.values()), **phases}

    kinds: dict[str, float] = defaultdict(float)
    device_time = args.device.startswith("cuda")
    for ev in prof.key_averages():
        t = ev.self_device_time_total if device_time else ev.self_cpu_time_total
        kinds[kind_of(ev.key)] += t / 1e6
    op_total = sum(kinds.values())

    print(f"{args.network}, {args.method}, {args.epochs} epochs, {args.threads} thread(s), "
          f"{args.device}: {total / args.epochs:.3f} s per epoch (under the profiler)\n")
    print(f"{'phase':<22} {'s/epoch':>8} {'share':>6}")
    for k, v in phases.items():
        print(f"{k:<22} {v / args.epochs:8.3f} {100 * v / total:5.1f}%")
    print(f"\n{'operations':<22} {'s/epoch':>8} {'share':>6}   ({'device' if device_time else 'CPU'} "
          "self time)")
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"{k:<22} {v / args.epochs:8.3f} {100 * v / op_total:5.1f}%")
    Path(args.out).write_text(json.dumps({
        "args": vars(args), "torch": torch.__version__, "seconds_per_epoch": total / args.epochs,
        "phases_s_per_epoch": {k: v / args.epochs for k, v in phases.items()},
        "kinds_s_per_epoch": {k: v / args.epochs for k, v in kinds.items()}}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
