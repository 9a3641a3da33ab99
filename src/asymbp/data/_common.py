"""Helpers shared by the format loaders: the paper's per-class protocols and array -> Dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Dataset
from ._errors import MissingData


def where(key: str, root: Path, files: str, downloadable: bool = True) -> str:
    """The one-line hint of what to do when a dataset's files are missing."""
    hint = f"put {files} in {root}"
    if downloadable:
        hint += f", or run 'asymbp datasets download {key}'"
    return hint


def to_dataset(key: str, arrays: dict[str, np.ndarray], meta: dict, num_classes: int,
               model: str) -> Dataset:
    """Cached arrays -> a `Dataset`: uint8 images become float32 in [0, 1]."""
    def x(a: np.ndarray) -> np.ndarray:
        if a.dtype == np.uint8:  # one pass, straight to float32 in [0, 1]
            return np.multiply(a, np.float32(1 / 255), dtype=np.float32)
        return a.astype(np.float32, copy=False)

    return Dataset(key, x(arrays["x_train"]), arrays["y_train"].astype(np.int64, copy=False),
                   x(arrays["x_test"]), arrays["y_test"].astype(np.int64, copy=False),
                   num_classes, model, meta)


def per_class_split(groups: dict[str, list[str]], n_train: int, n_test: int, seed: int, *,
                    n_classes: int | None = None, strict: bool = True, key: str = "",
                    source: str = "") -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """The paper's protocol: `n_classes` classes sampled, `n_train` / `n_test` items per class.

    Arguments:
        groups: class name -> its items (file names); order does not matter (sorted here).
        strict: every class needs `n_train + n_test` items; otherwise (Caltech-101, whose
            smallest classes have 31 images) a class needs `n_train + 1` and gets what is left,
            up to `n_test`, as test items.
    Returns:
        (sampled class names sorted, train [(item, label)], test [(item, label)]); labels index
        the sorted class list. The same seed and files give the same sample.
    """
    rng = np.random.default_rng(seed)
    need = n_train + (n_test if strict else 1)
    eligible = sorted(c for c, items in groups.items() if len(items) >= need)
    if n_classes is None:
        if len(eligible) < len(groups):
            short = sorted(set(groups) - set(eligible))[:3]
            raise MissingData(f"{key}: class(es) {', '.join(short)} in {source} have fewer than "
                              f"{need} images; the protocol needs {need} per class")
        classes = eligible
    else:
        if len(eligible) < n_classes:
            raise MissingData(f"{key}: only {len(eligible)} classes in {source} have at least {need} "
                              f"images, the protocol samples {n_classes}; check that all the "
                              "dataset's files are there")
        pick = rng.choice(len(eligible), size=n_classes, replace=False)
        classes = sorted(eligible[i] for i in pick)
    train, test = [], []
    for label, c in enumerate(classes):
        items = sorted(groups[c])
        items = [items[i] for i in rng.permutation(len(items))]
        train += [(it, label) for it in items[:n_train]]
        test += [(it, label) for it in items[n_train:n_train + n_test]]
    return classes, train, test
