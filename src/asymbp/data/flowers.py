"""Oxford Flowers-17 and Flowers-102 (Nilsback & Zisserman) with their official split files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Dataset, register
from ._archive import find, unpacked
from ._cache import cached
from ._common import to_dataset, where
from ._errors import CorruptData, MissingData
from ._images import LARGE_SIZE, decode_all, sample_hash


def read_mat(path: Path, names: list[str], key: str) -> dict[str, np.ndarray]:
    """The named variables of a .mat file, flattened to int64; one line if any is unreadable."""
    import scipy.io

    try:
        d = scipy.io.loadmat(path, variable_names=names)
        out = {n: np.asarray(d[n]).ravel().astype(np.int64) for n in names}
    except (ValueError, OSError, KeyError, TypeError, NotImplementedError) as err:
        raise CorruptData(f"{path}: not the official split file ({type(err).__name__}: {err}); "
                          f"delete it and run 'asymbp datasets download {key}'") from None
    return out


def _images(root: Path, key: str, archive: str, hint: str, ids: np.ndarray, fmt: str) -> list[Path]:
    jpg = unpacked(root, "jpg", [archive], key, hint)
    paths = [jpg / fmt.format(i) for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingData(f"{key}: {missing[0]} (and {len(missing) - 1} more) missing; unpack "
                          f"{archive} again or run 'asymbp datasets download {key}'")
    return paths


def _finish(key, root, paths_tr, y_tr, paths_te, y_te, n_cls, protocol, sources) -> Dataset:
    def build():
        x = decode_all(paths_tr + paths_te, LARGE_SIZE, desc=key)
        rel = [p.name for p in paths_tr] + ["--test--"] + [p.name for p in paths_te]
        meta = {"source": str(root), "protocol": protocol, "n_train": len(paths_tr),
                "n_test": len(paths_te), "sample_sha1": sample_hash(rel),
                "image_size": [3, LARGE_SIZE, LARGE_SIZE]}
        return ({"x_train": x[:len(paths_tr)], "y_train": y_tr, "x_test": x[len(paths_tr):],
                 "y_test": y_te}, meta)

    arrays, meta = cached(root, key, paths_tr + paths_te + sources, build)
    return to_dataset(key, arrays, meta, n_cls, "large")


def _check(key: str, needed: list[str], archive: str):
    def check(root: Path) -> None:
        missing = [n for n in needed if find(root, n, 1) is None] if root.is_dir() else needed
        if find(root, "jpg", 2) is None and find(root, archive, 1) is None:
            missing.append(archive)
        if missing:
            raise MissingData(f"{key}: {', '.join(missing)} not in {root}")

    return check


F102_FILES = "102flowers.tgz (or jpg/), imagelabels.mat, setid.mat"


@register("flowers102", name="Flowers102", classes=102, train="2040", test="6149", model="large",
          files=F102_FILES, check=_check("flowers102", ["imagelabels.mat", "setid.mat"], "102flowers.tgz"),
          description="Oxford Flowers-102, official setid.mat: train + val for training, test")
def load_flowers102(root: Path, seed: int) -> Dataset:
    hint = where("flowers102", root, F102_FILES)
    if not root.is_dir():
        raise MissingData(f"flowers102: data folder {root} does not exist; {hint}")
    labels_mat, setid_mat = root / "imagelabels.mat", root / "setid.mat"
    for p in (labels_mat, setid_mat):
        if not p.is_file():
            raise MissingData(f"flowers102: {p} not found; {hint}")
    labels = read_mat(labels_mat, ["labels"], "flowers102")["labels"]  # (8189,) in 1..102
    s = read_mat(setid_mat, ["trnid", "valid", "tstid"], "flowers102")  # 1-based image ids
    tr_ids, te_ids = np.sort(np.concatenate([s["trnid"], s["valid"]])), np.sort(s["tstid"])
    if max(tr_ids.max(initial=0), te_ids.max(initial=0)) > len(labels):
        raise CorruptData(f"flowers102: {setid_mat} refers to images beyond the {len(labels)} "
                          f"labels of {labels_mat}; replace both with the official files")
    fmt = "image_{:05d}.jpg"
    paths_tr = _images(root, "flowers102", "102flowers.tgz", hint, tr_ids, fmt)
    paths_te = _images(root, "flowers102", "102flowers.tgz", hint, te_ids, fmt)
    return _finish("flowers102", root, paths_tr, labels[tr_ids - 1] - 1, paths_te,
                   labels[te_ids - 1] - 1, 102,
                   "official setid.mat: trnid + valid train, tstid test", [labels_mat, setid_mat])


F17_FILES = "17flowers.tgz (or jpg/), datasplits.mat"


@register("flowers17", name="Flowers17", classes=17, train="60/class", test="20/class",
          model="large", files=F17_FILES, check=_check("flowers17", ["datasplits.mat"], "17flowers.tgz"),
          description="Oxford Flowers-17, official datasplits.mat split 1: trn1 + val1 train, tst1 test")
def load_flowers17(root: Path, seed: int) -> Dataset:
    hint = where("flowers17", root, F17_FILES)
    if not root.is_dir():
        raise MissingData(f"flowers17: data folder {root} does not exist; {hint}")
    splits = root / "datasplits.mat"
    if not splits.is_file():
        raise MissingData(f"flowers17: {splits} not found; {hint}")
    s = read_mat(splits, ["trn1", "val1", "tst1"], "flowers17")  # 1-based ids of 1360 images
    tr_ids, te_ids = np.sort(np.concatenate([s["trn1"], s["val1"]])), np.sort(s["tst1"])
    fmt = "image_{:04d}.jpg"
    paths_tr = _images(root, "flowers17", "17flowers.tgz", hint, tr_ids, fmt)
    paths_te = _images(root, "flowers17", "17flowers.tgz", hint, te_ids, fmt)
    # The images come sorted by class, 80 per class: image i (1-based) is class (i - 1) // 80.
    return _finish("flowers17", root, paths_tr, (tr_ids - 1) // 80, paths_te, (te_ids - 1) // 80,
                   17, "official datasplits.mat split 1: trn1 + val1 train, tst1 test", [splits])
