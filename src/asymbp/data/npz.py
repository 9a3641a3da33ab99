"""Any `.npz` with `x_train, y_train, x_test, y_test` is a dataset (`npz:PATH`)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import AsymbpError
from .base import Dataset, validate

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
SAVE_HINT = "save one with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def load_npz(path: str) -> Dataset:
    """Load `path` as a dataset.

    Inputs: vectors N×D, images N×C×H×W, N×H×W (one channel added) or N×H×W×C as Keras and
    PIL give them (transposed to N×C×H×W: an array whose last dimension is 1, 3 or 4 and whose
    second is not is taken to be channels-last). Images with values above 1.5 are taken to be
    0..255 and scaled to [0, 1]. Labels: N or N×1 integers (or whole-number floats), any values,
    mapped to 0..C−1 in sorted order. Then the checks every dataset gets (`validate`).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise AsymbpError(f"npz dataset {path!r} not found; give npz:PATH to an existing .npz file")
    if p.stat().st_size == 0:
        raise AsymbpError(f"{p}: the file is empty (0 bytes); {SAVE_HINT}")
    try:
        f = np.load(p, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a .npy file: one bare array
            raise AsymbpError(f"{p} is a single .npy array, not an .npz archive of named "
                              f"arrays; {SAVE_HINT}")
        with f:
            missing = [k for k in REQUIRED if k not in f.files]
            if missing:
                raise AsymbpError(
                    f"{p}: missing array(s) {', '.join(missing)}; an npz dataset needs "
                    f"{', '.join(REQUIRED)} (it has {', '.join(f.files) or 'none'})"
                )
            arrays = {k: f[k] for k in REQUIRED}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        if isinstance(err, AsymbpError):
            raise
        raise AsymbpError(f"{p}: not a readable .npz file ({err}); {SAVE_HINT}") from None
    x_train, x_test = (_images(arrays[k], p, k) for k in ("x_train", "x_test"))
    y_train, y_test = (_labels(arrays[k], p, k) for k in ("y_train", "y_test"))
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
        raise AsymbpError(f"{p}: {k} has shape {x.shape}; expected N×D, N×H×W, N×C×H×W or "
                          "N×H×W×C")
    if np.iscomplexobj(x):
        raise AsymbpError(f"{p}: {k} is complex ({x.dtype}); inputs must be real numbers: save "
                          "x.real or abs(x), whichever you mean")
    if not np.issubdtype(x.dtype, np.number):
        raise AsymbpError(f"{p}: {k} must be numeric, got {x.dtype}")
    if x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # N×H×W×C -> N×C×H×W
    x = np.ascontiguousarray(x, dtype=np.float32)  # at most one copy, even when transposed
    if x.ndim == 4 and x.max(initial=0) > 1.5:  # 0..255 images
        x /= 255.0
    return x


def _labels(y: np.ndarray, p: Path, k: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:  # a column N×1, as Keras gives them
        y = y[:, 0]
    if y.ndim != 1:
        raise AsymbpError(f"{p}: {k} has shape {y.shape}; labels must be N class indices "
                          "(shape (N,) or (N, 1)); for one-hot rows save y.argmax(1)")
    if y.dtype.kind == "f":  # whole numbers stored as floats (MATLAB, pandas) are labels too
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(y) & (y == np.round(y)) & (np.abs(y) < 2**53)
        if not whole.all():
            raise AsymbpError(f"{p}: {k} has {int((~whole).sum())} value(s) that are not whole "
                              f"numbers (e.g. {y[~whole][0]}); labels must be integer class "
                              "indices, not targets or probabilities")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iu":
        raise AsymbpError(f"{p}: {k} must be integer class labels, got {y.dtype}; for class "
                          "names save np.unique(y, return_inverse=True)[1]")
    return y


def _image_model(x: np.ndarray) -> str:
    c, h = x.shape[1], x.shape[2]
    if h <= 28 or c == 1:
        return "mnist"
    return "cifar" if h <= 32 else "large"
