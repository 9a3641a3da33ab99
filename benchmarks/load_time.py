"""Benchmark: loading a cached MNIST-sized dataset (`python benchmarks/load_time.py`).

Writes MNIST-sized IDX files (60 000 + 10 000 images, 28×28, the real format) to a temporary
folder, loads them once (parse + write the cache) and then `--repeat` times from the cache, and
prints the times side by side.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import numpy as np


def write_idx(path: Path, a: np.ndarray) -> None:
    raw = bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1))


def main(argv: list[str] | None = None) -> None:
    from asymbp.data import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mnist"
        root.mkdir()
        for prefix, n in (("train", 60000), ("t10k", 10000)):
            write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
            write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
        t = time.perf_counter()
        ds = load("mnist", tmp)
        first = time.perf_counter() - t
        warm = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            load("mnist", tmp)
            warm.append(time.perf_counter() - t)
        cache = next(root.glob(".asymbp-mnist-*.npz"))
        print(f"MNIST-sized ({len(ds.y_train)} + {len(ds.y_test)} images, cache "
              f"{cache.stat().st_size / 2**20:.0f} MiB uint8)")
        print(f"first load (parse IDX .gz + write cache): {first:.3f} s")
        print(f"cached load: median {np.median(warm):.3f} s, mean {np.mean(warm):.3f} ± "
              f"{np.std(warm):.3f} s, min {min(warm):.3f} s over {args.repeat}; "
              f"{first / np.median(warm):.1f}x faster than the first")


if __name__ == "__main__":
    main()
