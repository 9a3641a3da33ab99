"""SVHN (Netzer et al. 2011), cropped digits, from `train_32x32.mat` and `test_32x32.mat`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Dataset, register
from ._cache import cached
from ._common import to_dataset, where
from ._errors import CorruptData, MissingData

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}  # `extra` is not used


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """X (32, 32, 3, N) uint8 and y (N, 1) with 10 for the digit 0 -> (N, 3, 32, 32), 0..9."""
    import scipy.io

    try:
        d = scipy.io.loadmat(path, variable_names=["X", "y"])
        x, y = d["X"], d["y"]
    except (ValueError, OSError, KeyError, TypeError, NotImplementedError) as err:
        raise CorruptData(f"{path}: not a readable SVHN .mat file ({type(err).__name__}: {err}); "
                          "delete it and run 'asymbp datasets download svhn'") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise CorruptData(f"{path}: X has shape {x.shape} and y {y.shape}, expected (32, 32, 3, N) "
                          "and N labels; replace it with the original file")
    x = np.ascontiguousarray(x.transpose(3, 2, 0, 1), np.uint8)  # (H, W, C, N) -> (N, C, H, W)
    return x, (y.ravel().astype(np.int64) % 10)


def svhn_files(root: Path) -> dict[str, Path]:
    paths = {s: root / n for s, n in SVHN_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise MissingData(f"svhn: {', '.join(missing)} not found in {root}; "
                          + where("svhn", root, "train_32x32.mat and test_32x32.mat"))
    return paths


@register("svhn", name="SVHN", classes=10, train="73257", test="26032", model="svhn",
          files="train_32x32.mat, test_32x32.mat", check=svhn_files,
          description="SVHN cropped digits, standard train/test (no extra)")
def load_svhn(root: Path, seed: int) -> Dataset:
    paths = svhn_files(root)

    def build():
        (xtr, ytr), (xte, yte) = (read_svhn_mat(paths[s]) for s in ("train", "test"))
        return ({"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte},
                {"source": str(root), "split": "standard train/test, no extra"})

    arrays, meta = cached(root, "svhn", list(paths.values()), build)
    return to_dataset("svhn", arrays, meta, 10, "svhn")
