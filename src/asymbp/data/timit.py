"""TIMIT-80: 80 classes of 1845-dim acoustic features, 400 train / 100 test per class.

TIMIT is licensed (LDC93S1), so there is no download: the features go in
`<data root>/timit80/timit80.npz` with `x` (N, D) float features and `y` (N,) class labels (any
integers or strings). The loader samples 80 classes with at least 500 examples and 400 / 100
examples of each, by the seed.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .base import Dataset, register
from ._cache import cached
from ._common import per_class_split, to_dataset, where
from ._errors import CorruptData, MissingData

FILE = "timit80.npz"
FILES = f"{FILE} with arrays x (N, 1845) features and y (N,) labels"


def read_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise CorruptData(f"{path}: has arrays {', '.join(f.files) or 'none'}, needs x (N, D) "
                                  "features and y (N,) labels; save it with numpy.savez(path, x=..., y=...)")
            x, y = f["x"], f["y"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CorruptData(f"{path}: not a readable .npz ({err}); save it with "
                          "numpy.savez(path, x=..., y=...)") from None
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(x.dtype, np.number):
        raise CorruptData(f"{path}: x has shape {x.shape} ({x.dtype}) and y {y.shape}; expected "
                          "numeric x (N, D) and y (N,)")
    return x, y


def check_timit(root: Path) -> None:
    if not (root / FILE).is_file():
        raise MissingData(f"timit80: {root / FILE} not found")


@register("timit80", name="TIMIT80", classes=80, train="400/class", test="100/class",
          model="mlp", files=FILES, check=check_timit,
          description="TIMIT features (licensed, no download): 80 classes, 400/100 per class")
def load_timit80(root: Path, seed: int) -> Dataset:
    path = root / FILE
    if not path.is_file():
        raise MissingData(f"timit80: {path} not found; "
                          + where("timit80", root, FILES, downloadable=False)
                          + " (TIMIT is licensed by the LDC: compute the features yourself)")

    def build():
        x, y = read_features(path)
        names = np.array([str(v) for v in y])
        idx_by_class = {}
        for i, c in enumerate(names):
            idx_by_class.setdefault(c, []).append(f"{i:09d}")  # zero-padded: sorts as numbers
        classes, train, test = per_class_split(idx_by_class, 400, 100, seed, n_classes=80,
                                               key="timit80", source=str(path))
        tr = np.array([int(i) for i, _ in train], np.int64)
        te = np.array([int(i) for i, _ in test], np.int64)
        arrays = {"x_train": x[tr].astype(np.float32), "y_train": np.array([c for _, c in train]),
                  "x_test": x[te].astype(np.float32), "y_test": np.array([c for _, c in test]),
                  "train_index": tr, "test_index": te}
        meta = {"source": str(path), "protocol": "80 classes sampled, 400 train / 100 test per class",
                "seed": seed, "classes": classes, "feature_dim": int(x.shape[1])}
        return arrays, meta

    arrays, meta = cached(root, f"timit80-s{seed}", [path], build)
    return to_dataset("timit80", arrays, meta, 80, "mlp")
