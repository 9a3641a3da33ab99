"""Step time of every feedback scheme relative to plain backprop.

One training step = forward, summed cross-entropy, backward, SGD step, batch 100, on the
Table-1 `mnist` and `cifar` networks. For each scheme, the same step with plain
nn.Conv2d/nn.Linear is timed right before it (interleaved, in this one process), and the
ratio of the two is taken; the printed ratio is the median over repeats. Achieved FLOP/s is
shown as a fraction of the peak of a large matmul timed in the same process.

    python benchmarks/step_time.py                 # CPU, every scheme, both networks
    python benchmarks/step_time.py --device cuda --networks cifar --repeats 20

Targets on the 2-core CPU (issue 2): <= 1.05x for BP, uSF, NuSF, frSF, RndF, sSF, KP;
<= 1.10x for brSF(-p); <= 1.25x for PFA.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import asymbp
from asymbp import feedback

SHAPES = {"mnist": (1, 28), "cifar": (3, 32)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, n: int = 2048, dtype=torch.float32) -> float:
    """FLOP/s of a large square matmul on this device (best of several)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / 3)
    return 2 * n**3 / best


def make_step(model, x, y, lr=1e-4):
    opt = asymbp.optim.SGD(model.parameters(), lr=lr)

    def step():
        out = model(x)
        loss = F.cross_entropy(out, y, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_steps(step, n: int, device) -> float:
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t) / n


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def bench_network(net: str, schemes: list[str], device, batch: int, repeats: int, steps: int,
                  peak: float) -> list[dict]:
    c, size = SHAPES[net]
    torch.manual_seed(0)
    plain = asymbp.models.build(net, 10).to(device)
    x = torch.randn(batch, c, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    plain_step = make_step(plain, x, y)
    flops = step_flops(plain_step)
    steps_of = {}
    for scheme in schemes:
        model = asymbp.convert(copy.deepcopy(plain), scheme, seed=1)
        steps_of[scheme] = make_step(model, x, y)
    for s in [plain_step, *steps_of.values()]:  # warm up every path
        for _ in range(3):
            s()
    ratios = {s: [] for s in schemes}
    plain_times, times = [], {s: [] for s in schemes}
    for _ in range(repeats):
        for scheme in schemes:
            tp = time_steps(plain_step, steps, device)
            ts = time_steps(steps_of[scheme], steps, device)
            plain_times.append(tp)
            times[scheme].append(ts)
            ratios[scheme].append(ts / tp)
    tp = statistics.median(plain_times)
    rows = [{"network": net, "scheme": "plain nn", "ms": tp * 1e3, "ratio": 1.0,
             "flops_per_step": flops, "peak_fraction": flops / tp / peak}]
    for scheme in schemes:
        ts = statistics.median(times[scheme])
        rows.append({"network": net, "scheme": scheme, "ms": ts * 1e3,
                     "ratio": statistics.median(ratios[scheme]),
                     "ratio_iqr": _iqr(ratios[scheme]),
                     "flops_per_step": flops, "peak_fraction": flops / ts / peak})
    return rows


def _iqr(values):
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return [q[0], q[2]]


def target(scheme: str) -> float | None:
    cls, _ = feedback.resolve(scheme)
    if cls.name in ("BP", "uSF", "NuSF", "frSF", "RndF", "sSF", "KP"):
        return 1.05
    if cls.name == "brSF":
        return 1.10
    if cls.name.startswith("PFA"):
        return 1.25
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--networks", default="mnist,cifar")
    p.add_argument("--schemes", default=None,
                   help="comma-separated (default: every registered scheme plus brSF-25, frSF-25)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="steps per timing")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).with_name("step_time.json")))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    schemes = (args.schemes.split(",") if args.schemes else
               feedback.scheme_names() + ["brSF-25", "frSF-25"])
    peak = matmul_peak(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for net in args.networks.split(","):
        rows += bench_network(net, schemes, device, args.batch, args.repeats, args.steps, peak)
    print(f"\n{'network':<8} {'scheme':<9} {'ms/step':>8} {'ratio':>7} {'IQR':>13} "
          f"{'target':>7} {'%peak':>6}")
    for r in rows:
        t = target(r["scheme"]) if r["scheme"] != "plain nn" else None
        iqr = "" if "ratio_iqr" not in r else f"{r['ratio_iqr'][0]:.2f}-{r['ratio_iqr'][1]:.2f}"
        mark = "" if t is None else ("ok" if r["ratio"] <= t else "MISS")
        print(f"{r['network']:<8} {r['scheme']:<9} {r['ms']:8.2f} {r['ratio']:7.3f} {iqr:>13} "
              f"{(f'<={t:.2f} ' + mark) if t else '':>7} {100 * r['peak_fraction']:5.1f}%")
    Path(args.out).write_text(json.dumps({"device": str(device), "torch": torch.__version__,
                                          "threads": torch.get_num_threads(),
                                          "matmul_peak_flops": peak, "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
