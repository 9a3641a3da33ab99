"""Image-folder datasets: one sub-folder of images per class, as Caltech, LFW, PubFig83, SUFR-W,
iCubWorld and MIT-Indoor-67 are distributed, with the paper's per-class protocols (DESIGN §7).

Every image is decoded with Pillow, lifted to RGB and resized to 119×119 for the `large`
network. Sampled classes and splits depend only on the seed and the files, and are recorded in
`Dataset.meta` (the class names, per-class counts and a hash of the sampled file list; the file
lists themselves are kept in the cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import Dataset, register
from ._archive import find, unpacked
from ._cache import cached
from ._common import per_class_split, to_dataset, where
from ._errors import MissingData
from ._images import LARGE_SIZE, decode_all, is_image, sample_hash


@dataclass(frozen=True)
class Tree:
    """How one image-folder dataset is laid out and sampled."""

    key: str
    name: str  # the paper's row name
    marker: str | None  # the folder holding one sub-folder per class (None: found by looking)
    archives: tuple[str, ...]  # archives as distributed that unpack to it
    files: str  # what the user puts in <root>/<key>/
    n_train: int
    n_test: int
    n_classes: int | None = None  # classes sampled (None: all)
    strict: bool = True  # every class needs n_train + n_test images (see per_class_split)
    downloadable: bool = True


def list_classes(base: Path) -> dict[str, list[str]]:
    """Class folder name -> its images (paths relative to `base`, found recursively)."""
    groups = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        imgs = sorted(str(p.relative_to(base)) for p in d.rglob("*") if p.is_file() and is_image(p))
        if imgs:
            groups[d.name] = imgs
    return groups


def find_class_root(root: Path, depth: int = 3) -> Path | None:
    """The shallowest folder under root whose sub-folders (at least two) hold images."""
    level = [root]
    for _ in range(depth + 1):
        for d in level:
            subs = [s for s in d.iterdir() if s.is_dir() and not s.name.startswith(".")]
            if len(subs) >= 2 and sum(any(is_image(f) for f in s.iterdir()) for s in subs[:5]) >= 2:
                return d
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    return None


def class_root(t: Tree, root: Path) -> Path:
    hint = where(t.key, root, t.files, t.downloadable)
    if t.marker:
        return unpacked(root, t.marker, list(t.archives), t.key, hint)
    if not root.is_dir():
        raise MissingData(f"{t.key}: data folder {root} does not exist; {hint}")
    base = find_class_root(root)
    if base is None and t.archives:
        for name in t.archives:
            if (arch := find(root, name)) is not None:
                from ._archive import extract

                extract(arch, arch.parent, t.key)
                base = find_class_root(root)
                break
    if base is None:
        raise MissingData(f"{t.key}: no folder of per-class image folders under {root}; {hint}")
    return base


def build_sample(t: Tree, root: Path, base: Path, classes: list[str], train, test, seed: int | None,
                 protocol: str, extra_sources: list[Path] = ()) -> Dataset:
    """Decode the sampled images (cached per seed) and return the `Dataset`."""
    files = [base / f for f, _ in train] + [base / f for f, _ in test]
    rel = [str((base / f).relative_to(root)) for f, _ in train + test]
    tag = t.key if seed is None else f"{t.key}-s{seed}"

    def build():
        x = decode_all(files, LARGE_SIZE, desc=t.key)
        arrays = {"x_train": x[:len(train)], "y_train": np.array([c for _, c in train], np.int64),
                  "x_test": x[len(train):], "y_test": np.array([c for _, c in test], np.int64),
                  "train_files": np.array(rel[:len(train)]), "test_files": np.array(rel[len(train):])}
        meta = {"source": str(base), "protocol": protocol, "seed": seed, "classes": classes,
                "n_train": len(train), "n_test": len(test),
                "sample_sha1": sample_hash(rel[:len(train)] + ["--test--"] + rel[len(train):]),
                "image_size": [3, LARGE_SIZE, LARGE_SIZE]}
        return arrays, meta

    arrays, meta = cached(root, tag, files + list(extra_sources), build)
    return to_dataset(t.key, arrays, meta, len(classes), "large")


def tree_loader(t: Tree):
    """The loader of a one-folder-per-class dataset with a per-class protocol."""

    def load(root: Path, seed: int) -> Dataset:
        base = class_root(t, root)
        groups = list_classes(base)
        classes, train, test = per_class_split(groups, t.n_train, t.n_test, seed, key=t.key,
                                               n_classes=t.n_classes, strict=t.strict, source=str(base))
        protocol = (f"{t.n_classes or len(classes)} classes"
                    + (" sampled" if t.n_classes else "")
                    + f", {t.n_train} train / {t.n_test} test per class")
        return build_sample(t, root, base, classes, train, test, seed, protocol)

    return load


def tree_check(t: Tree):
    def check(root: Path) -> None:
        if not root.is_dir():
            raise MissingData(f"{t.key}: {root} does not exist")
        if t.marker and find(root, t.marker) is not None:
            return
        if any(find(root, a) is not None for a in t.archives):
            return
        if not t.marker and find_class_root(root) is not None:
            return
        raise MissingData(f"{t.key}: nothing of {t.files} under {root}")

    return check


def _register(t: Tree, classes: int, train: str, test: str, description: str, loader=None) -> None:
    register(t.key, name=t.name, classes=classes, train=train, test=test, model="large",
             files=t.files, check=tree_check(t), description=description)(loader or tree_loader(t))


CALTECH101 = Tree("caltech101", "Cal101", "101_ObjectCategories",
                  ("caltech-101.zip", "101_ObjectCategories.tar.gz"),
                  "caltech-101.zip or 101_ObjectCategories.tar.gz (or 101_ObjectCategories/)",
                  30, 10, strict=False)
_register(CALTECH101, 102, "30/class", "10/class",
          "Caltech-101 with its background class: 102 classes, 30 train / up to 10 test per class "
          "(the smallest classes have fewer than 40 images)")

CALTECH256 = Tree("caltech256-101", "Cal256-101", "256_ObjectCategories",
                  ("256_ObjectCategories.tar",), "256_ObjectCategories.tar (or 256_ObjectCategories/)",
                  30, 10, n_classes=102)
_register(CALTECH256, 102, "30/class", "10/class",
          "Caltech-256, 102 classes sampled by the seed, 30 train / 10 test per class")

PUBFIG83 = Tree("pubfig83-id", "PubFig83-ID", None, ("pubfig83.v1.tgz", "pubfig83.tgz"),
                "the PubFig83 images, one folder per identity (e.g. pubfig83/<name>/*.jpg)",
                85, 15, n_classes=80, downloadable=False)
_register(PUBFIG83, 80, "85/class", "15/class",
          "PubFig83 identification: 80 of 83 identities sampled, 85 train / 15 test each")

SUFRW = Tree("sufrw-id", "SUFR-W-ID", None, ("SUFR-W.zip", "sufr_w.zip"),
             "the SUFR-W (SUFR in the wild) images, one folder per identity (<name>/*.jpg)",
             10, 5, n_classes=80, downloadable=False)
_register(SUFRW, 80, "10/class", "5/class",
          "SUFR-W identification: 80 identities with >= 15 images sampled, 10 train / 5 test each")

LFW = Tree("lfw-id", "LFW-ID", "lfw", ("lfw.tgz",), "lfw.tgz (or its unpacked lfw/<name>/*.jpg)",
           10, 5, n_classes=80)
_register(LFW, 80, "10/class", "5/class",
          "LFW identification: 80 identities with >= 15 images sampled, 10 train / 5 test each")


# --- iCubWorld: the distribution's own train/ and test/ folders -----------------------------

ICUB = Tree("icub", "iCub", None, ("iCubWorld1.0.zip", "iCubWorld.zip"),
            "iCubWorld (1.0) unpacked so that .../train/<class>/ and .../test/<class>/ hold the images",
            0, 0, downloadable=False)


def find_train_test(root: Path, depth: int = 4) -> Path | None:
    level = [root]
    for _ in range(depth + 1):
        for d in level:
            if (d / "train").is_dir() and (d / "test").is_dir():
                return d
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    return None


def load_icub(root: Path, seed: int) -> Dataset:
    hint = where("icub", root, ICUB.files, downloadable=False)
    if not root.is_dir():
        raise MissingData(f"icub: data folder {root} does not exist; {hint}")
    base = find_train_test(root)
    if base is None:
        for name in ICUB.archives:
            if (arch := find(root, name)) is not None:
                from ._archive import extract

                extract(arch, arch.parent, "icub")
                base = find_train_test(root)
                break
    if base is None:
        raise MissingData(f"icub: no folder with train/ and test/ sub-folders under {root}; {hint}")
    tr, te = list_classes(base / "train"), list_classes(base / "test")
    classes = sorted(set(tr) | set(te))
    if set(tr) != set(te):
        raise MissingData(f"icub: {base}/train and {base}/test have different class folders "
                          f"({sorted(set(tr) ^ set(te))[:3]}); restore the distribution's folders")
    train = [(f"train/{f}", classes.index(c)) for c in classes for f in tr[c]]
    test = [(f"test/{f}", classes.index(c)) for c in classes for f in te[c]]
    return build_sample(ICUB, root, base, classes, train, test, None,
                        "the distribution's own train/test folders")


def check_icub(root: Path) -> None:
    if not root.is_dir() or (find_train_test(root) is None
                             and not any(find(root, a) is not None for a in ICUB.archives)):
        raise MissingData(f"icub: no folder with train/ and test/ sub-folders under {root}")


register("icub", name=ICUB.name, classes=10, train="official", test="official", model="large",
         files=ICUB.files, check=check_icub,
         description="iCubWorld: the distribution's own train/test folders")(load_icub)


# --- MIT Indoor-67: the official TrainImages.txt / TestImages.txt (80 / 20 per class) ---------

SCENE67 = Tree("scene67", "Scene67", "Images", ("indoorCVPR_09.tar",),
               "indoorCVPR_09.tar (or Images/<class>/) plus TrainImages.txt and TestImages.txt",
               80, 20)


def _read_split(path: Path, base: Path, groups: dict[str, list[str]], classes: list[str]):
    items = []
    for line in path.read_text().split():
        line = line.strip().replace("\\", "/")
        cls = line.split("/", 1)[0]
        if cls not in groups:
            raise MissingData(f"scene67: {path} lists {line} but {base / cls} has no images; "
                              "unpack indoorCVPR_09.tar again")
        if not (base / line).is_file():
            raise MissingData(f"scene67: {base / line} (listed in {path.name}) is missing; "
                              "unpack indoorCVPR_09.tar again")
        items.append((line, classes.index(cls)))
    return items


def load_scene67(root: Path, seed: int) -> Dataset:
    base = class_root(SCENE67, root)
    groups = list_classes(base)
    train_txt, test_txt = find(root, "TrainImages.txt"), find(root, "TestImages.txt")
    if train_txt and test_txt:  # the official split is the paper's 80 / 20 per class
        classes = sorted(groups)
        train = _read_split(train_txt, base, groups, classes)
        test = _read_split(test_txt, base, groups, classes)
        return build_sample(SCENE67, root, base, classes, train, test, None,
                            "official TrainImages.txt / TestImages.txt (80 / 20 per class)",
                            [train_txt, test_txt])
    classes, train, test = per_class_split(groups, 80, 20, seed, key="scene67", source=str(base))
    return build_sample(SCENE67, root, base, classes, train, test, seed,
                        "no split files: 80 train / 20 test per class sampled by the seed")


_register(SCENE67, 67, "80/class", "20/class",
          "MIT Indoor-67 with its official TrainImages.txt / TestImages.txt", loader=load_scene67)
