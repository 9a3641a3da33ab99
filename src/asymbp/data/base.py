"""What every dataset module shares (DESIGN §7): `Dataset`, the `DATASETS` registry and its
`register` decorator, the data root, the key check and `validate`.

The format loaders (`idx`, `cifar`, ...) import these from here and register themselves;
`asymbp.data` imports the loaders and re-exports it all (a loader never imports the package, so
there is no cycle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import AsymbpError
from ..registry import Registry


@dataclass
class Dataset:
    """A loaded dataset, in memory.

    Attributes:
        key: registry key (`mnist5k`, `cifar10`, `npz:/path/file.npz`, ...).
        x_train, x_test: float32 arrays, (N, C, H, W) images or (N, D) vectors.
        y_train, y_test: int64 arrays of class indices 0..num_classes−1.
        num_classes: number of classes.
        model: the default network key (DESIGN §5) for this dataset.
        meta: how it was made (source files, sampled classes, seed, ...), stored with results.
    """

    key: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    model: str
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a dataset before loading it."""

    key: str
    name: str  # as printed in the paper's tables (or a descriptive name)
    loader: Callable[..., Dataset]  # loader(root: Path, seed: int) -> Dataset
    classes: int | None
    train: str  # size or per-class protocol, for the `asymbp datasets` table
    test: str
    model: str
    packaged: bool = False  # installs with the package (no download)
    description: str = ""
    files: str = ""  # which files go in `<data root>/<key>/`, as the source distributes them
    check: Callable[[Path], object] | None = None  # cheap presence check: raises MissingData/CorruptData


# Keys as printed (lower-case); looked up case-insensitively like every registry. `npz:PATH`
# is not an entry: any .npz file is a dataset (`asymbp.data.npz`).
DATASETS: Registry[DatasetInfo] = Registry("dataset", hint="or npz:PATH for an .npz file")


def register(key: str, *, name: str, classes: int | None, train: str, test: str, model: str,
             packaged: bool = False, description: str = "", files: str = "",
             check: Callable[[Path], object] | None = None):
    """Decorator: register `loader(root: Path, seed: int) -> Dataset` under `key`.

    `root` is the dataset's own folder (`<data root>/<key>`); `seed` drives any sampling of
    classes or splits (the paper's protocols), so the same seed gives the same sample. `files`
    says which files go in that folder; `check(root)` is a cheap test that they are there
    (raising `MissingData` or `CorruptData`), used by `asymbp datasets`.
    """

    def deco(loader):
        DATASETS.register(key, DatasetInfo(key, name, loader, classes, train, test, model,
                                           packaged, description, files, check))
        return loader

    return deco


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: `data_dir`, else `$ASYMBP_DATA`, else `~/.cache/asymbp`."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("ASYMBP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "asymbp"


def dataset_keys() -> list[str]:
    return list(DATASETS) + ["npz:PATH"]


def check_key(key: str) -> str:
    """The registered spelling of dataset `key` (an `npz:PATH` as given), or the one-line error
    for an unknown one (before any work is done)."""
    if key.startswith("npz:"):
        return key
    return DATASETS.canonical(key)


def validate(ds: Dataset) -> None:
    """Check a loaded dataset before any training: every loader's result (and a `Dataset` given
    to `train(data=...)`) goes through here, so every format gets the same checks.

    Raises a one-line `AsymbpError` naming the dataset and the array when a split is empty,
    inputs are not (N, D) / (N, C, H, W) real numbers or hold NaN/inf, labels are not 1-D
    integers in 0..num_classes−1 or do not match the inputs in number, or train and test
    inputs differ in shape. A streamed dataset (`asymbp.data.stream`) has its labels checked;
    its images are checked as they are decoded.
    """
    if getattr(ds, "streamed", False):
        for ky in ("y_train", "y_test"):
            y = getattr(ds, ky)
            if len(y) == 0 or y.min() < 0 or y.max() >= ds.num_classes:
                raise AsymbpError(
                    f"dataset {ds.key}: {ky} has {len(y)} labels (in {y.min() if len(y) else '-'}"
                    f"..{y.max() if len(y) else '-'}); a run needs at least one example per "
                    f"split, labelled 0..{ds.num_classes - 1}"
                )
        return
    for split in ("train", "test"):
        kx, ky = f"x_{split}", f"y_{split}"
        x, y = getattr(ds, kx), getattr(ds, ky)
        if x.ndim not in (2, 4) or 0 in x.shape[1:]:
            raise AsymbpError(
                f"dataset {ds.key}: {kx} has shape {x.shape}; expected (N, D) vectors or "
                "(N, C, H, W) images, each with at least one value"
            )
        if x.dtype.kind not in "fiu":
            raise AsymbpError(
                f"dataset {ds.key}: {kx} has dtype {x.dtype}; inputs must be real numbers "
                "(float32): convert them before saving"
            )
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise AsymbpError(
                f"dataset {ds.key}: {ky} has dtype {y.dtype} and shape {y.shape}; labels must be "
                "a 1-D array of integer class indices"
            )
        if len(x) != len(y):
            raise AsymbpError(
                f"dataset {ds.key}: {kx} has {len(x)} rows but {ky} has {len(y)}; they must match "
                "(one label per example)"
            )
        if len(x) == 0:
            raise AsymbpError(
                f"dataset {ds.key}: {kx} has no examples; a run needs at least one training and "
                "one test example: check how the arrays were made"
            )
        if y.min() < 0 or y.max() >= ds.num_classes:
            raise AsymbpError(
                f"dataset {ds.key}: {ky} has labels {y.min()}..{y.max()}, outside "
                f"0..{ds.num_classes - 1}; labels must index the {ds.num_classes} classes"
            )
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise AsymbpError(
            f"dataset {ds.key}: train inputs {ds.x_train.shape[1:]} and test inputs "
            f"{ds.x_test.shape[1:]} differ in shape; every example must have the same shape"
        )
    for kx in ("x_train", "x_test"):  # last: the only check that reads every value
        bad = _nonfinite(getattr(ds, kx))
        if bad:
            raise AsymbpError(
                f"dataset {ds.key}: {kx} has {bad} non-finite value(s) (NaN or inf); inputs must "
                "be finite: fix or drop those examples"
            )


def _nonfinite(x: np.ndarray) -> int:
    """How many NaN/inf values `x` holds, without a full-size temporary in the common case."""
    if x.dtype.kind != "f":
        return 0
    # A NaN or inf anywhere makes the sum non-finite, so a finite sum proves them all finite;
    # only a non-finite sum (or one that overflowed) pays for the exact count.
    with np.errstate(all="ignore"):
        if np.isfinite(x.sum()):
            return 0
    return int(x.size - np.count_nonzero(np.isfinite(x)))
