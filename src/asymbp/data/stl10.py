"""STL-10 (Coates et al. 2011) from its binary release, resized 96 -> 119 for the `large` net."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Dataset, register
from ._archive import find, unpacked
from ._cache import cached
from ._common import to_dataset, where
from ._errors import CorruptData, MissingData
from ._images import LARGE_SIZE, resize_array

ARCHIVE, FOLDER = "stl10_binary.tar.gz", "stl10_binary"
BINS = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def read_stl_images(path: Path) -> np.ndarray:
    """Raw uint8, 3×96×96 per image, each channel stored column-major -> (N, 3, 96, 96)."""
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % (3 * 96 * 96):
        raise CorruptData(f"{path}: {raw.size} bytes is not a whole number of 3x96x96 images "
                          "(truncated?); delete it and run 'asymbp datasets download stl10'")
    return raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # column-major -> (N, C, H, W)


def read_stl_labels(path: Path, n: int) -> np.ndarray:
    y = np.fromfile(path, np.uint8).astype(np.int64) - 1  # stored 1..10
    if len(y) != n or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise CorruptData(f"{path}: {len(y)} labels in 1..10 expected {n}; replace it with the "
                          "original file")
    return y


def check_stl10(root: Path) -> None:
    if not root.is_dir() or (find(root, FOLDER) is None and find(root, ARCHIVE) is None):
        raise MissingData(f"stl10: {root} holds neither {FOLDER}/ nor {ARCHIVE}")


@register("stl10", name="STL10", classes=10, train="5000", test="8000", model="large",
          files="stl10_binary.tar.gz (or stl10_binary/ with train_X.bin, train_y.bin, "
                "test_X.bin, test_y.bin)", check=check_stl10,
          description="STL-10 labelled train/test, 96x96 resized to 119x119")
def load_stl10(root: Path, seed: int) -> Dataset:
    hint = where("stl10", root, f"{ARCHIVE} (or its unpacked {FOLDER}/)")
    # Only the labelled binaries are unpacked: unlabeled_X.bin is 2.7 GB the paper does not use.
    base = unpacked(root, FOLDER, [ARCHIVE], "stl10", hint,
                    keep=lambda name: Path(name).name in BINS or name.rstrip("/") == FOLDER)
    paths = {n: base / n for n in BINS}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        raise MissingData(f"stl10: {', '.join(missing)} missing from {base}; {hint}")

    def build():
        arrays = {}
        for split in ("train", "test"):
            x = read_stl_images(paths[f"{split}_X.bin"])
            arrays[f"x_{split}"] = resize_array(x, LARGE_SIZE)
            arrays[f"y_{split}"] = read_stl_labels(paths[f"{split}_y.bin"], len(x))
        return arrays, {"source": str(base), "split": "standard labelled 5000/8000",
                        "resized": f"96 -> {LARGE_SIZE} (Pillow bilinear)"}

    arrays, meta = cached(root, "stl10", list(paths.values()), build)
    return to_dataset("stl10", arrays, meta, 10, "large")
