"""ImageNet (ILSVRC 2012) from the user's own files, streamed (`asymbp.data.stream`).

image-net.org hands the files out only after a registration, so asymbp cannot download them.
`<data root>/imagenet/` holds either the three archives as distributed:

    ILSVRC2012_img_train.tar       a tar of 1000 per-class tars n01440764.tar, ... (JPEGs)
    ILSVRC2012_img_val.tar         the 50 000 validation JPEGs, flat
    ILSVRC2012_devkit_t12.tar.gz   data/meta.mat (the synsets) and
                                   data/ILSVRC2012_validation_ground_truth.txt (one 1-based
                                   ILSVRC2012_ID per validation image, in file-name order)

or an extracted tree in torchvision's layout, `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`.

The archives are read in place, never extracted (no second 150 GB copy): preparing is indexing
the byte range of every JPEG inside the tars, once, into `.asymbp-imagenet-index-v1.npz` next to
them (written atomically, keyed by the archives' sizes and times). The train tar's index is
built class by class, each class's part saved as it is done (`.asymbp-imagenet-parts/`), so a
killed preparation resumes with the next class. A split then holds file names, offsets and
labels only, never a decoded image.

Classes are the devkit's 1000 leaf synsets (num_children 0) in sorted WNID order, as
torchvision's ImageNet and ImageFolder number them; a validation image's label is its ground
truth ILSVRC2012_ID mapped to its WNID through meta.mat. The validation set is the test split
(ImageNet's test labels are not public); the honest protocol holds its validation split out of
the training images. Pixels are normalised with ImageNet's standard mean and std (`MEAN`,
`STD`: torchvision's and BioTorch's), not re-measured on the training set.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from ._cache import cached
from ._errors import CorruptData, MissingData
from ._images import is_image
from .base import register
from .stream import ImageFiles, StreamedDataset

KEY = "imagenet"
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
META = "data/meta.mat"
TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
CLASSES = 1000
# The per-channel mean and std of ImageNet's training pixels in [0, 1], as torchvision's
# reference scripts and BioTorch normalise with.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FILES = (f"{TRAIN_TAR}, {VAL_TAR} and {DEVKIT} (or an extracted train/<wnid>/*.JPEG and "
         "val/<wnid>/*.JPEG tree)")
WHERE = (f"put {FILES} in {{root}}; they come from image-net.org, which needs a registration, "
         "so asymbp cannot download them")
INDEX_TAG = "imagenet-index"


def layout(root: Path) -> str:
    """"tree" or "archives", whichever `root` holds (the tree first: it is already unpacked);
    the one-line `MissingData` naming what is missing and where it goes otherwise."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        return "tree"
    missing = [n for n in (TRAIN_TAR, VAL_TAR, DEVKIT) if not (root / n).is_file()]
    if not missing:
        return "archives"
    if not root.is_dir():
        raise MissingData(f"{KEY}: data folder {root} does not exist; {WHERE.format(root=root)}")
    raise MissingData(f"{KEY}: {', '.join(missing)} not found in {root}; "
                      f"{WHERE.format(root=root)}")


@register(KEY, name="ImageNet", classes=CLASSES, train="1 281 167", test="50 000 (ILSVRC val)",
          model="resnet18", files=FILES, check=layout,
          description="ILSVRC 2012 from the user's files (registration at image-net.org), "
                      "streamed: decoded by loader workers batch by batch")
def load_imagenet(root: Path, seed: int = 0, *, classes: int | None = CLASSES, crop: int = 224,
                  resize: int = 256) -> StreamedDataset:
    """The ILSVRC 2012 train and validation sets under `root` (see the module docstring).

    Arguments:
        root: the folder of the archives or of the train/ and val/ tree.
        seed: unused (ImageNet's splits are fixed); the registry's loader signature.
        classes: the number of classes the files must have (None: whatever the devkit or the
            tree says, for small test trees).
        crop, resize: the transforms' sizes (training crop and test centre crop; test resize).
    """
    kind = layout(root)
    arrays, meta = (_index_tree(root) if kind == "tree" else _index_archives(root))
    wnids = [w.decode() for w in arrays["wnids"]]
    if classes is not None and len(wnids) != classes:
        raise CorruptData(f"{KEY}: {root} has {len(wnids)} classes, ILSVRC 2012 has {classes}; "
                          f"put the complete {TRAIN_TAR}, {VAL_TAR} and {DEVKIT} there")
    source = {"train": root / TRAIN_TAR, "test": root / VAL_TAR} if kind == "archives" else {
        "train": root, "test": root}

    def files(split: str) -> ImageFiles:
        offsets = arrays.get(f"{split}_offsets")
        return ImageFiles(source[split], arrays[f"{split}_names"], arrays[f"{split}_labels"]
                          .astype(np.int64), offsets,
                          None if offsets is None else arrays[f"{split}_sizes"])

    return StreamedDataset(KEY, files("train"), files("test"), len(wnids), "resnet18",
                           crop=crop, resize=resize, mean=MEAN, std=STD,
                           meta={**meta, "layout": kind, "root": str(root)})


# ---- an extracted tree ------------------------------------------------------------------------


def _index_tree(root: Path) -> tuple[dict, dict]:
    def classes(split: str) -> list[str]:
        return sorted(d.name for d in (root / split).iterdir()
                      if d.is_dir() and not d.name.startswith("."))

    wnids = classes("train")
    if not wnids:
        raise MissingData(f"{KEY}: {root / 'train'} has no class folders; expected "
                          f"train/<wnid>/*.JPEG; {WHERE.format(root=root)}")
    if classes("val") != wnids:
        extra = sorted(set(classes("val")) ^ set(wnids))[:3]
        raise CorruptData(f"{KEY}: {root / 'val'} has {len(classes('val'))} class folders, "
                          f"{root / 'train'} {len(wnids)} (differing: {', '.join(extra)}); "
                          "both need the same <wnid> folders")
    sources = [root / s / w for s in ("train", "val") for w in wnids]

    def build():
        out = {"wnids": np.array(wnids, dtype=np.bytes_)}
        for split, folder in (("train", "train"), ("test", "val")):
            names, labels = [], []
            for label, w in enumerate(wnids):
                found = sorted(p.name for p in (root / folder / w).iterdir() if is_image(p))
                names += [f"{folder}/{w}/{n}" for n in found]
                labels += [label] * len(found)
            if not names:
                raise MissingData(f"{KEY}: no images under {root / folder}; expected "
                                  f"{folder}/<wnid>/*.JPEG")
            out[f"{split}_names"] = np.array(names, dtype=np.bytes_)
            out[f"{split}_labels"] = np.array(labels, dtype=np.int16)
        return out, {}

    return cached(root, INDEX_TAG + "-tree", sources, build)


# ---- the archives, indexed in place ----------------------------------------------------------


def read_devkit(path: Path) -> tuple[list[str], np.ndarray]:
    """(the leaf WNIDs sorted: class i is wnids[i], each validation image's class index in
    file order) from the devkit archive."""
    try:
        with tarfile.open(path, "r:*") as t:
            members = {m.name.split("/", 1)[-1]: m for m in t if m.isfile()}
            missing = [n for n in (META, TRUTH) if n not in members]
            if missing:
                raise CorruptData(f"{path}: no {' or '.join(missing)} in it; copy the original "
                                  f"{DEVKIT} from image-net.org again")
            meta_bytes = t.extractfile(members[META]).read()
            truth_text = t.extractfile(members[TRUTH]).read().decode()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CorruptData(f"{path}: corrupt or truncated archive ({type(err).__name__}: {err}); "
                          f"copy the original {DEVKIT} again") from None
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
        ids = np.atleast_1d(synsets["ILSVRC2012_ID"]).astype(np.int64)
        names = [str(w) for w in np.atleast_1d(synsets["WNID"])]
        leaf = np.atleast_1d(synsets["num_children"]).astype(np.int64) == 0
    except (MatReadError, ValueError, KeyError, TypeError, IndexError,
            NotImplementedError) as err:  # NotImplementedError: a MATLAB v7.3 (HDF5) file
        raise CorruptData(f"{path}: {META} is not the devkit's synset table ({err}); copy the "
                          f"original {DEVKIT} again") from None
    id_to_wnid = {int(i): n for i, n, is_leaf in zip(ids, names, leaf) if is_leaf}
    wnids = sorted(id_to_wnid.values())
    label = {w: k for k, w in enumerate(wnids)}
    try:
        truth = [int(line) for line in truth_text.split()]
        labels = np.array([label[id_to_wnid[i]] for i in truth], dtype=np.int16)
    except (ValueError, KeyError) as err:
        raise CorruptData(f"{path}: {TRUTH} holds {err}, not an ILSVRC2012_ID of a leaf synset "
                          f"of {META}; copy the original {DEVKIT} again") from None
    return wnids, labels


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # uncompressed only: members are byte ranges of it
    except tarfile.ReadError as err:
        raise CorruptData(f"{path}: not an uncompressed tar ({err}); asymbp reads it as "
                          "image-net.org distributes it: copy the original file again") from None


def _jpegs(t: tarfile.TarFile, base: int = 0) -> tuple[list[str], list[int], list[int]]:
    """(names, data offsets + base, sizes) of the files in tar `t`, sorted by name."""
    items = sorted((m.name, base + m.offset_data, m.size) for m in t if m.isfile())
    return [n for n, _, _ in items], [o for _, o, _ in items], [s for _, _, s in items]


def _index_archives(root: Path) -> tuple[dict, dict]:
    sources = [root / TRAIN_TAR, root / VAL_TAR, root / DEVKIT]

    def build():
        wnids, val_labels = read_devkit(root / DEVKIT)
        with _open_tar(root / VAL_TAR) as t:
            try:
                val = _jpegs(t)
            except (tarfile.TarError, EOFError, OSError) as err:
                raise CorruptData(f"{root / VAL_TAR}: corrupt or truncated ({err}); copy the "
                                  "original file again") from None
        if len(val[0]) != len(val_labels):
            raise CorruptData(f"{KEY}: {VAL_TAR} holds {len(val[0])} images but {TRUTH} has "
                              f"{len(val_labels)} labels; copy the original files again")
        train = _index_train(root, wnids)
        out = {"wnids": np.array(wnids, dtype=np.bytes_)}
        for split, (names, offsets, sizes), labels in (("train", train[:3], train[3]),
                                                        ("test", val, val_labels)):
            out[f"{split}_names"] = np.array(names, dtype=np.bytes_)
            out[f"{split}_offsets"] = np.array(offsets, dtype=np.int64)
            out[f"{split}_sizes"] = np.array(sizes, dtype=np.int64)
            out[f"{split}_labels"] = np.asarray(labels, dtype=np.int16)
        return out, {}

    arrays, meta = cached(root, INDEX_TAG, sources, build)
    _drop_parts(root)
    return arrays, meta


def _parts_dir(root: Path) -> Path:
    return root / ".asymbp-imagenet-parts"


def _drop_parts(root: Path) -> None:
    parts = _parts_dir(root)
    if parts.is_dir():
        for p in parts.iterdir():
            p.unlink(missing_ok=True)
        parts.rmdir()


def _index_train(root: Path, wnids: list[str]) -> tuple[list, list, list, list]:
    """(names, offsets, sizes, labels) of the train tar's JPEGs, class by class; each class's
    index is saved in the parts folder as soon as it is read (a restart skips those classes)."""
    path = root / TRAIN_TAR
    st = path.stat()
    parts = _parts_dir(root)
    stamp = f"{st.st_size}-{st.st_mtime_ns}"  # parts of another copy of the tar do not count
    label = {w: k for k, w in enumerate(wnids)}
    seen: dict[str, tuple] = {}
    with _open_tar(path) as outer:
        try:
            for member in outer:
                if not member.isfile():
                    continue
                wnid = Path(member.name).name.removesuffix(".tar")
                if wnid not in label or not member.name.endswith(".tar"):
                    raise CorruptData(f"{path}: member {member.name} is not the tar of one of "
                                      f"the devkit's {len(wnids)} classes; copy the original "
                                      f"{TRAIN_TAR} again")
                part = parts / f"{wnid}-{stamp}.npz"
                if part.is_file():
                    with np.load(part) as f:
                        seen[wnid] = (list(f["names"]), list(f["offsets"]), list(f["sizes"]))
                    continue
                with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
                    names, offsets, sizes = _jpegs(inner, member.offset_data)
                names = [f"{wnid}/{Path(n).name}" for n in names]
                seen[wnid] = (names, offsets, sizes)
                _save_part(parts, part, names, offsets, sizes)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise CorruptData(f"{path}: corrupt or truncated ({type(err).__name__}: {err}); "
                              "copy the original file again") from None
    if set(seen) != set(wnids):
        missing = sorted(set(wnids) - set(seen))
        raise CorruptData(f"{path}: holds {len(seen)} class tars, the devkit has {len(wnids)} "
                          f"classes (missing: {', '.join(missing[:3])}); copy the original "
                          f"{TRAIN_TAR} again")
    out: tuple[list, list, list, list] = ([], [], [], [])
    for w in wnids:
        names, offsets, sizes = seen[w]
        out[0].extend(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        out[1].extend(int(o) for o in offsets)
        out[2].extend(int(s) for s in sizes)
        out[3].extend([label[w]] * len(names))
    return out


def _save_part(parts: Path, part: Path, names, offsets, sizes) -> None:
    """One class's index, atomically (a temporary file renamed); nothing if read-only."""
    try:
        parts.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parts, suffix=".tmp")
    except OSError:
        return  # a read-only data folder: indexed again next time
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, names=np.array(names, dtype=np.bytes_),
                     offsets=np.array(offsets, np.int64), sizes=np.array(sizes, np.int64))
        os.replace(tmp, part)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
