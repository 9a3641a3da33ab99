"""Datasets (DESIGN §7): a registry of loaders, each returning arrays in memory.

`load(key, data_dir=None, seed=0)` returns a `Dataset`: `x_train` (N, C, H, W) float32 images or
(N, D) vectors, `y_train` int64 labels 0..C−1, the same for test, plus the paper's default
network for it. Keys: the registered ones (`asymbp.data.DATASETS`) and `npz:PATH` for any `.npz`
with `x_train, y_train, x_test, y_test` (the layouts it takes: `npz.load_npz`). Every loaded
dataset passes `validate` (shapes, labels, no empty split, no NaN/inf) before it is used.

Data lives under one root: `data_dir`, else `$ASYMBP_DATA`, else `~/.cache/asymbp`, one folder per
dataset key holding the files exactly as the original source distributes them (archives packed or
unpacked). One small module per format reads them: `idx` (MNIST), `cifar`, `svhn`, `stl10`,
`folders` (Caltech-101/256, iCubWorld, PubFig83, SUFR-W, LFW, MIT Indoor-67), `flowers`
(Flowers-17/102 with their split files), `timit` (features in an .npz), `packaged`, `npz`;
`imagenet` is streamed instead (a `StreamedDataset`: an index of its JPEGs, `asymbp.data.stream`).
What they share is in `base`. Preprocessed arrays are cached next to the sources (`_cache`),
`download` fetches and verifies the ones with a public source, and `asymbp datasets` lists them
all.
"""

from __future__ import annotations

import os

from ..paper import PAPER_DATASETS
from .base import (DATASETS, Dataset, DatasetInfo, check_key, data_root, dataset_keys, register,
                   validate)

# Loaders register themselves on import, the paper's 15 in its table order.
from . import idx, cifar, svhn, stl10, folders, flowers, timit, packaged  # noqa: F401,I001
from . import imagenet  # noqa: F401  (streamed: decoded batch by batch, asymbp.data.stream)
from .npz import load_npz
from .synthetic import synthetic as make_synthetic
from .synthetic import synthetic_train_size

__all__ = ["DATASETS", "PAPER_ORDER", "Dataset", "DatasetInfo", "check_key", "data_root",
           "dataset_keys", "load", "register", "synthetic_train_size", "validate"]

# The paper's table order (DESIGN §7), then the packaged ones.
PAPER_ORDER = list(PAPER_DATASETS.values())
DATASETS.reorder(lambda key: (PAPER_ORDER.index(key) if key in PAPER_ORDER else len(PAPER_ORDER),
                              key))


def load(key: str, data_dir: str | os.PathLike | None = None, seed: int = 0,
         synthetic: int | None = None) -> Dataset:
    """Load dataset `key` into memory (see the module docstring); with `synthetic` (a size, 0 for
    the dataset's own), random data of its shapes instead (`asymbp.data.synthetic`).

    Here, not in `base`: it is the one function that needs the loaders (`npz` imports `base`).
    """
    key = check_key(key)
    if synthetic is not None:
        return make_synthetic(key, synthetic, seed)
    if key.startswith("npz:"):
        return load_npz(key[4:])
    ds = DATASETS[key].loader(data_root(data_dir) / key, seed)
    validate(ds)
    return ds
