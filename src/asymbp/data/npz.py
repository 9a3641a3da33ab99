"""Any `.npz` with `x_train, y_train, x_test, y_test` is a dataset (`npz:PATH`)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import AsymbpError
from . import Dataset, validate

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str) -> Dataset:
    """Load `path`: images N×H×W (one channel added) or N×C×H×W, vectors N×D; labels any ints."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise AsymbpError(f"npz dataset {path!r} not found; give npz:PATH to an existing .npz file")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in REQUIRED if k not in f.files]
            if missing:
                raise AsymbpError(
                    f"{p}: missing array(s) {', '.join(missing)}; an npz dataset needs "
                    f"{', '.join(REQUIRED)} (it has {', '.join(f.files) or 'none'})"
                )
            arrays = {k: f[k] for k in REQUIRED}
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        if isinstance(err, AsymbpError):
            raise
        raise AsymbpError(f"{p}: not a readable .npz file ({err}); save one with numpy.savez") from None
    x_train, x_test = (_images(arrays[k], p, k) for k in ("x_train", "x_test"))
    y_train, y_test = arrays["y_train"], arrays["y_test"]
    for k, y in (("y_train", y_train), ("y_test", y_test)):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise AsymbpError(f"{p}: {k} must be a 1-D array of integer class labels, got "
                              f"{y.dtype} with shape {y.shape}")
    # Labels may be any integers: map them to 0..C−1 in sorted order.
    classes = np.unique(np.concatenate([y_train, y_test]))
    y_train = np.searchsorted(classes, y_train).astype(np.int64)
    y_test = np.searchsorted(classes, y_test).astype(np.int64)
    n_cls = max(int(len(classes)), 2)
    ds = Dataset(f"npz:{p}", x_train, y_train, x_test, y_test, n_cls,
                 "mlp" if x_train.ndim == 2 else _image_model(x_train), {"source": str(p)})
    validate(ds)
    return ds


def _images(x: np.ndarray, p: Path, k: str) -> np.ndarray:
    if x.ndim == 3:  # N×H×W -> N×1×H×W
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise AsymbpError(f"{p}: {k} has shape {x.shape}; expected N×D, N×H×W or N×C×H×W")
    if not np.issubdtype(x.dtype, np.number):
        raise AsymbpError(f"{p}: {k} must be numeric, got {x.dtype}")
    x = x.astype(np.float32)
    if x.ndim == 4 and x.max(initial=0) > 1.5:  # 0..255 images
        x /= 255.0
    return x


def _image_model(x: np.ndarray) -> str:
    c, h = x.shape[1], x.shape[2]
    if h <= 28 or c == 1:
        return "mnist"
    return "cifar" if h <= 32 else "large"
