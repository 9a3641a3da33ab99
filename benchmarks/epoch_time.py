"""Images per second of a whole training epoch, per network and device.

A whole epoch is what `train()` does each epoch: the mini-batch steps, the paper's BN-statistics
pass (20 batches, when the method has BN), evaluation on the test set and the alignment metrics.
The data are synthetic, of each network's real shapes (mnist 1×28×28, cifar/svhn/resnet20
3×32×32, large 3×119×119 with 102 classes, mlp 1845 features with 80 classes). The FLOPs of one
epoch are counted by torch's FlopCounterMode over a separate one-epoch run, and the achieved
FLOP/s is shown as a fraction of the peak of a large matmul timed in this process.

    python benchmarks/epoch_time.py                                  # CPU, every network
    python benchmarks/epoch_time.py --networks mnist --n-train 4000 --n-test 1000 --threads 1
    python benchmarks/epoch_time.py --device cuda --amp bf16 --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from step_time import matmul_peak

from asymbp.data import Dataset
from asymbp.train import train

# network -> (input shape, classes, training images per epoch by default)
SHAPES = {
    "mnist": ((1, 28, 28), 10, 4000),
    "cifar": ((3, 32, 32), 10, 2000),
    "svhn": ((3, 32, 32), 10, 1000),
    "large": ((3, 119, 119), 102, 500),
    "mlp": ((1845,), 80, 4000),
    "resnet20": ((3, 32, 32), 10, 1000),
}


def synthetic(network: str, n_train: int, n_test: int, seed: int = 0) -> Dataset:
    shape, classes, _ = SHAPES[network]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=n_train + n_test)
    return Dataset("mnist5k", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes,
                   network)


def add_workload_args(p: argparse.ArgumentParser, epochs: int, epochs_help: str) -> None:
    """The options of one network's synthetic workload (profile_epoch.py, ab_epoch.py)."""
    p.add_argument("--network", default="mnist", choices=list(SHAPES))
    p.add_argument("--method", default="uSF+BN+BM")
    p.add_argument("--n-train", type=int, default=None, help="default: per network")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")


def workload(args) -> tuple[Dataset, dict]:
    """(synthetic data, base run config) from `add_workload_args`'s options; sets the threads."""
    torch.set_num_threads(args.threads)
    data = synthetic(args.network, args.n_train or SHAPES[args.network][2], args.n_test)
    return data, {"dataset": "mnist5k", "model": args.network, "method": args.method,
                  "lr_mult": 0.1, "device": args.device}


def epoch_flops(config: dict, data: Dataset) -> int:
    with FlopCounterMode(display=False) as counter:
        train({**config, "epochs": 1, "compile": False}, data=data)
    return counter.get_total_flops()


def bench(network: str, args, peak: float) -> dict:
    n_train = args.n_train or SHAPES[network][2]
    data = synthetic(network, n_train, args.n_test)
    config = {"dataset": "mnist5k", "model": network, "method": args.method,
              "lr_mult": args.lr_mult, "epochs": args.epochs, "device": args.device,
              "amp": args.amp, "compile": args.compile, "channels_last": args.channels_last,
              "alignment": not args.no_alignment}
    flops = epoch_flops(config, data)
    result = train(config, data=data)
    # The first epoch pays for warm-up (and compilation): the median of the later ones.
    seconds = statistics.median(e["seconds"] for e in result["epochs"][1:])
    return {"network": network, "method": args.method, "device": args.device,
            "n_train": n_train, "n_test": args.n_test, "epoch_s": seconds,
            "images_per_s": n_train / seconds, "flops_per_epoch": flops,
            "flops_per_s": flops / seconds, "peak_fraction": flops / seconds / peak,
            "diverged": result["diverged"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--networks", default=",".join(SHAPES))
    p.add_argument("--method", default="uSF+BN+BM")
    p.add_argument("--lr-mult", type=float, default=0.1)
    p.add_argument("--n-train", type=int, default=None, help="default: per network")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs + 1 warm-up")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC images, as train() does by default (default: on)")
    p.add_argument("--no-alignment", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).with_name("epoch_time.json")))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_peak(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s, method {args.method}, amp {args.amp}, "
          f"compile {args.compile}, channels_last {args.channels_last}")
    rows = []
    print(f"\n{'network':<9} {'train':>6} {'epoch s':>8} {'images/s':>9} {'GFLOP/ep':>9} "
          f"{'GFLOP/s':>8} {'%peak':>6}")
    for net in args.networks.split(","):
        r = bench(net, args, peak)
        rows.append(r)
        print(f"{net:<9} {r['n_train']:>6} {r['epoch_s']:8.3f} {r['images_per_s']:9.0f} "
              f"{r['flops_per_epoch'] / 1e9:9.1f} {r['flops_per_s'] / 1e9:8.1f} "
              f"{100 * r['peak_fraction']:5.1f}%" + ("  (diverged)" if r["diverged"] else ""),
              flush=True)
    Path(args.out).write_text(json.dumps({
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "matmul_peak_flops": peak, "args": vars(args), "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
