"""MNIST and Fashion-MNIST from their IDX files, gzipped as distributed or already gunzipped."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .base import Dataset, register
from ._cache import cached
from ._common import to_dataset, where
from ._errors import CorruptData, MissingData

MNIST_FILES = {  # split -> (images, labels), without the .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path, key: str = "mnist") -> np.ndarray:
    """One IDX file: magic (0, 0, dtype, ndim), ndim big-endian uint32 sizes, then the data."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptData(f"{path}: not a readable gzip file ({err}); delete it and run "
                          f"'asymbp datasets download {key}'") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise CorruptData(f"{path}: not an IDX file (bad magic number); delete it and run "
                          f"'asymbp datasets download {key}'")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4)) if len(raw) >= 4 + 4 * ndim else ()
    dtype = np.dtype(_DTYPES[raw[2]])
    start = 4 + 4 * ndim
    if len(dims) != ndim or len(raw) - start != int(np.prod(dims)) * dtype.itemsize:
        raise CorruptData(f"{path}: IDX header says shape {dims} but the file holds "
                          f"{max(len(raw) - start, 0)} data bytes (truncated?); delete it and run "
                          f"'asymbp datasets download {key}'")
    return np.frombuffer(raw, dtype, offset=start).reshape(dims)


def mnist_files(root: Path, key: str = "mnist", name: str = "MNIST") -> dict[str, Path]:
    """The four IDX files under root (each .gz or raw), or `MissingData` naming what is missing."""
    found, missing = {}, []
    for fname in (n for pair in MNIST_FILES.values() for n in pair):
        for cand in (root / fname, root / f"{fname}.gz"):
            if cand.is_file():
                found[fname] = cand
                break
        else:
            missing.append(f"{fname}.gz")
    if missing:
        raise MissingData(f"{key}: {', '.join(missing)} not found in {root}; "
                          + where(key, root, f"the four {name} IDX files (.gz or gunzipped)"))
    return found


@register("mnist", name="MNIST", classes=10, train="60000", test="10000", model="mnist",
          files="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or gunzipped)",
          check=mnist_files, description="MNIST, the standard 60k/10k split")
def load_mnist(root: Path, seed: int) -> Dataset:
    return load_idx(root, "mnist", "MNIST")


def load_idx(root: Path, key: str, name: str) -> Dataset:
    """A dataset in MNIST's four IDX files: 28×28 grey images, 10 classes, its 60k/10k split."""
    files = mnist_files(root, key, name)

    def build():
        arrays = {}
        for split, (img, lab) in MNIST_FILES.items():
            x, y = read_idx(files[img], key), read_idx(files[lab], key)
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise CorruptData(f"{files[img]}: {x.shape} images do not match {files[lab]}: "
                                  f"{y.shape} labels; replace both with the original files")
            arrays[f"x_{split}"] = x[:, None].astype(np.uint8)  # (N, 28, 28) -> (N, 1, 28, 28)
            arrays[f"y_{split}"] = y.astype(np.int64)
        return arrays, {"source": str(root), "files": sorted(p.name for p in files.values()),
                        "split": "standard 60000/10000"}

    arrays, meta = cached(root, key, list(files.values()), build)
    return to_dataset(key, arrays, meta, 10, "mnist")


# ---- Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): MNIST's file names and format -------------
# BioTorch's second MNIST-scale benchmark (DESIGN §9a). The default network is the paper's
# `mnist` (it takes the 28×28 images as they are); BioTorch's `lenet_mnist` needs them resized
# to 32×32 in the training loop (asymbp.augment.resize).


def fashion_mnist_files(root: Path) -> dict[str, Path]:
    return mnist_files(root, "fashion-mnist", "Fashion-MNIST")


@register("fashion-mnist", name="Fashion-MNIST", classes=10, train="60000", test="10000",
          model="mnist",
          files="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or gunzipped)",
          check=fashion_mnist_files,
          description="Fashion-MNIST (Zalando), the standard 60k/10k split")
def load_fashion_mnist(root: Path, seed: int) -> Dataset:
    return load_idx(root, "fashion-mnist", "Fashion-MNIST")
