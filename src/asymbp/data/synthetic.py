"""Random data of a real dataset's shapes and sizes: `asymbp sweep --synthetic` times and
smoke-tests a whole experiment where the data is not (and its numbers mean nothing)."""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import AsymbpError
from .base import DATASETS, Dataset

# key -> (training examples, test examples, one example's shape, classes), as published
SHAPES = {
    "mnist": (60_000, 10_000, (1, 28, 28), 10),
    "fashion-mnist": (60_000, 10_000, (1, 28, 28), 10),
    "cifar10": (50_000, 10_000, (3, 32, 32), 10),
    "cifar100": (50_000, 10_000, (3, 32, 32), 100),
    "svhn": (73_257, 26_032, (3, 32, 32), 10),
    "imagenet": (1_281_167, 50_000, (3, 224, 224), 1000),  # ILSVRC 2012 train / val, cropped
}
# Synthetic data is in memory: beyond this a run would not fit (ImageNet's own sizes: 770 GB).
MAX_BYTES = 8 * 2**30


def synthetic_train_size(ds: Dataset) -> int | None:
    """The real training-set size behind a synthetic dataset (what `--synthetic N` shrank),
    None for real data."""
    meta = getattr(ds, "meta", None) or {}
    return meta.get("stands_for") if meta.get("synthetic") else None


def synthetic(key: str, size: int = 0, seed: int = 0) -> Dataset:
    """Uniform [0, 1) images and uniform labels shaped like dataset `key`, seeded.

    Arguments:
        key: a dataset of `SHAPES`.
        size: at most this many training and test examples each (0: the dataset's sizes).
        seed: the draws' seed (the run's data_seed).
    """
    if key not in SHAPES:
        raise AsymbpError(f"no synthetic shape for dataset {key!r}; --synthetic knows "
                          f"{', '.join(SHAPES)}")
    if size < 0:
        raise AsymbpError(f"--synthetic N must be >= 0 examples (0: the dataset's sizes), got "
                          f"{size}")
    n_train, n_test, shape, classes = SHAPES[key]
    if size:
        n_train, n_test = min(n_train, size), min(n_test, size)
    need = (n_train + n_test) * int(np.prod(shape)) * 4
    if need > MAX_BYTES:
        raise AsymbpError(f"--synthetic {size} for {key} would hold {n_train + n_test:,} "
                          f"{'x'.join(map(str, shape))} images in memory ({need / 2**30:,.0f} "
                          f"GiB); give a smaller N, e.g. --synthetic 64")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])  # each dataset its own

    def split(n):
        return (rng.random((n, *shape), dtype=np.float32),
                rng.integers(0, classes, size=n, dtype=np.int64))

    (x_tr, y_tr), (x_te, y_te) = split(n_train), split(n_test)
    return Dataset(key, x_tr, y_tr, x_te, y_te, classes, DATASETS[key].model,
                   meta={"synthetic": True, "size": size, "seed": seed,
                         "stands_for": SHAPES[key][0]})
