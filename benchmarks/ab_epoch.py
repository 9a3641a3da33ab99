"""Whole-epoch time of two run configs, A against B, interleaved in one process.

On a machine whose speed drifts (a shared VM), separate benchmark runs minutes apart differ by
more than most optimisations; alternating A and B in one process and comparing medians does
not. Each repeat trains A, then B, for `--epochs` epochs (the first one, warm-up, is dropped).
Synthetic data of the network's real shapes, as in epoch_time.py.

    python benchmarks/ab_epoch.py --a amp=fp32 --b amp=bf16
    python benchmarks/ab_epoch.py --a eval_batch_size=1000 --b eval_batch_size=250
    python benchmarks/ab_epoch.py --method SGD --a channels_last=false --b channels_last=true
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from epoch_time import add_workload_args, workload

from asymbp.train import train


def overrides(text: str) -> dict:
    """"k=v,k=v" -> a dict; values parsed as JSON where they can be (numbers, true/false)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, _, v = part.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", default="", help="config overrides of A, e.g. amp=fp32")
    p.add_argument("--b", default="", help="config overrides of B, e.g. amp=bf16")
    add_workload_args(p, 3, "per repeat, the first one dropped")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).with_name("ab_epoch.json")))
    args = p.parse_args(argv)
    data, base = workload(args)
    base["epochs"] = args.epochs
    configs = {"A": {**base, **overrides(args.a)}, "B": {**base, **overrides(args.b)}}
    seconds: dict[str, list[float]] = {"A": [], "B": []}
    for _ in range(args.repeats):
        for name, config in configs.items():
            result = train(config, data=data)
            seconds[name] += [e["seconds"] for e in result["epochs"][1:]]
    a, b = statistics.median(seconds["A"]), statistics.median(seconds["B"])
    print(f"{args.network}, {args.method}, {args.threads} thread(s), {args.device}; "
          f"{args.repeats} repeats × {args.epochs - 1} timed epochs each")
    print(f"A ({args.a or 'defaults'}): {a:.3f} s per epoch")
    print(f"B ({args.b or 'defaults'}): {b:.3f} s per epoch")
    print(f"A / B = {a / b:.3f}")
    Path(args.out).write_text(json.dumps({"args": vars(args), "torch": torch.__version__,
                                          "seconds": seconds, "median_a": a, "median_b": b,
                                          "ratio_a_over_b": a / b}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
