"""CIFAR-10 and CIFAR-100 from their python pickles (Krizhevsky 2009), tar.gz or unpacked."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .base import Dataset, register
from ._archive import find, unpacked
from ._cache import cached
from ._common import to_dataset, where
from ._errors import CorruptData, MissingData

LAYOUT = {  # key -> (archive, folder, train batches, test batch, label field, classes)
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], "test",
                 b"fine_labels", 100),
}


def read_batch(path: Path, label_field: bytes, key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: data (N, 3072) uint8 rows of R, G, B planes; labels a list of ints."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, 3, 32, 32)
        y = np.asarray(d[label_field], np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError,
            IndexError) as err:
        raise CorruptData(f"{path}: not a CIFAR python batch ({type(err).__name__}: {err}); delete "
                          f"it and run 'asymbp datasets download {key}'") from None
    if len(x) != len(y):
        raise CorruptData(f"{path}: {len(x)} images but {len(y)} labels; replace it with the original")
    return x, y


def _check(key: str):
    archive, folder, *_ = LAYOUT[key]

    def check(root: Path) -> None:
        if not root.is_dir() or (find(root, folder) is None and find(root, archive) is None):
            raise MissingData(f"{key}: {root} holds neither {folder}/ nor {archive}")

    return check


def _loader(key: str):
    archive, folder, train_names, test_name, field, n_cls = LAYOUT[key]

    def load(root: Path, seed: int) -> Dataset:
        hint = where(key, root, archive + f" (or its unpacked {folder}/)")
        base = unpacked(root, folder, [archive], key, hint)
        paths = {n: base / n for n in train_names + [test_name]}
        missing = [n for n, p in paths.items() if not p.is_file()]
        if missing:
            raise MissingData(f"{key}: {', '.join(missing)} missing from {base}; {hint}")

        def build():
            xs, ys = zip(*(read_batch(paths[n], field, key) for n in train_names))
            x_test, y_test = read_batch(paths[test_name], field, key)
            arrays = {"x_train": np.concatenate(xs), "y_train": np.concatenate(ys),
                      "x_test": x_test, "y_test": y_test}
            return arrays, {"source": str(base), "split": "standard 50000/10000"}

        arrays, meta = cached(root, key, list(paths.values()), build)
        return to_dataset(key, arrays, meta, n_cls, "cifar")

    return load


register("cifar10", name="CIFAR", classes=10, train="50000", test="10000", model="cifar",
         files="cifar-10-python.tar.gz (or cifar-10-batches-py/)", check=_check("cifar10"),
         description="CIFAR-10, the standard split")(_loader("cifar10"))
register("cifar100", name="CIFAR100", classes=100, train="50000", test="10000", model="cifar",
         files="cifar-100-python.tar.gz (or cifar-100-python/)", check=_check("cifar100"),
         description="CIFAR-100 fine labels, the standard split")(_loader("cifar100"))
