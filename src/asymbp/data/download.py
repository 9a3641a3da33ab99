"""Downloads of the datasets that have a stable public source, verified against pinned checksums.

`download(key)` fetches every file of `SOURCES[key]` into `<data root>/<key>/`, resuming a
partial `.part` file with an HTTP Range request, and checks each finished file against its pinned
MD5 / SHA-256 before renaming it into place; a wrong checksum or a truncated transfer is named in
one line. `ASYMBP_MIRROR` (or `mirror=`) replaces the official URLs with `<mirror>/<key>/<file>`,
so a mirror of a data root is a plain static file server (the tests serve one on 127.0.0.1).

Checksums are the ones published with the files or recorded by torchvision (see `Remote.pin`);
`None` means none is known and the file is accepted after printing its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .base import DATASETS, check_key, data_root
from ._archive import find
from ._cache import has_cache
from ._errors import CorruptData, MissingData
from ..errors import AsymbpError

CHUNK = 1 << 20
STAMP = ".asymbp-verified.json"  # name -> size, mtime, digest of files already verified


@dataclass(frozen=True)
class Remote:
    """One file as the official source distributes it."""

    name: str  # file name in <data root>/<key>/
    url: str  # official URL
    md5: str | None = None
    sha256: str | None = None
    pin: str = ""  # where the checksum comes from

    @property
    def digest(self) -> tuple[str, str] | None:
        if self.sha256:
            return "sha256", self.sha256
        if self.md5:
            return "md5", self.md5
        return None


_TV = "torchvision.datasets"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's mirror of LeCun's files
_F102 = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
_F17 = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"

SOURCES: dict[str, list[Remote]] = {
    "mnist": [
        Remote("train-images-idx3-ubyte.gz", _MNIST + "train-images-idx3-ubyte.gz",
               md5="f68b3c2dcbeaaa9fbdd348bbdeb94873", pin=f"{_TV}.MNIST"),
        Remote("train-labels-idx1-ubyte.gz", _MNIST + "train-labels-idx1-ubyte.gz",
               md5="d53e105ee54ea40749a09fcbcd1e9432", pin=f"{_TV}.MNIST"),
        Remote("t10k-images-idx3-ubyte.gz", _MNIST + "t10k-images-idx3-ubyte.gz",
               md5="9fb629c4189551a2d022fa330f9573f3", pin=f"{_TV}.MNIST"),
        Remote("t10k-labels-idx1-ubyte.gz", _MNIST + "t10k-labels-idx1-ubyte.gz",
               md5="ec29112dd5afa0611ce80d1b7f02629c", pin=f"{_TV}.MNIST"),
    ],
    "cifar10": [Remote("cifar-10-python.tar.gz",
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       md5="c58f30108f718f92721af3b95e74349a", pin=f"{_TV}.CIFAR10 (and the CIFAR page)")],
    "cifar100": [Remote("cifar-100-python.tar.gz",
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        md5="eb9058c3a382ffc7106e4002c42a8d85", pin=f"{_TV}.CIFAR100 (and the CIFAR page)")],
    "svhn": [
        Remote("train_32x32.mat", "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
               md5="e26dedcc434d2e4c54c9b2d4a06d8373", pin=f"{_TV}.SVHN"),
        Remote("test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
               md5="eb5a983be6a315427106f1b164d9cef3", pin=f"{_TV}.SVHN"),
    ],
    "stl10": [Remote("stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                     md5="91f7769df0f17e558f3565bffb0c7dfb", pin=f"{_TV}.STL10")],
    "caltech101": [Remote("caltech-101.zip",
                          "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip")],
    "caltech256-101": [Remote("256_ObjectCategories.tar",
                              "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar",
                              md5="67b4f42ca05d46448c6bb8ecd2220f6d", pin=f"{_TV}.Caltech256")],
    "flowers17": [
        Remote("17flowers.tgz", _F17 + "17flowers.tgz", md5="b59a65d8d1a99cd66944d474e1289eab",
               pin="third-party Flowers17 torchvision-style loader (not torchvision itself)"),
        Remote("datasplits.mat", _F17 + "datasplits.mat", md5="4828cddfd0d803c5abbdebcb1e148a1e",
               pin="third-party Flowers17 torchvision-style loader (not torchvision itself)"),
    ],
    "flowers102": [
        Remote("102flowers.tgz", _F102 + "102flowers.tgz", md5="52808999861908f626f3c1f4e79d11fa",
               pin=f"{_TV}.Flowers102"),
        Remote("imagelabels.mat", _F102 + "imagelabels.mat", md5="e0620be6f572b9609742df49c70aed4d",
               pin=f"{_TV}.Flowers102"),
        Remote("setid.mat", _F102 + "setid.mat", md5="a5357ecc9cb78c4bef273ce3793fc85c",
               pin=f"{_TV}.Flowers102"),
    ],
    "lfw-id": [Remote("lfw.tgz", "https://vis-www.cs.umass.edu/lfw/lfw.tgz",
                      md5="a17d05bd522c52d84eca14327a23d494", pin=f"{_TV}.LFWPeople")],
    "scene67": [
        Remote("indoorCVPR_09.tar",
               "http://groups.csail.mit.edu/vision/LabelMe/NewImages/indoorCVPR_09.tar"),
        Remote("TrainImages.txt", "https://web.mit.edu/torralba/www/TrainImages.txt"),
        Remote("TestImages.txt", "https://web.mit.edu/torralba/www/TestImages.txt"),
    ],
}

# Files a user may have from an older official source, verified when present (they are not
# downloaded: the current official source packs them inside another archive).
KNOWN: dict[str, list[Remote]] = {
    "caltech101": [Remote("101_ObjectCategories.tar.gz",
                          "http://www.vision.caltech.edu/Image_Datasets/Caltech101/"
                          "101_ObjectCategories.tar.gz",
                          md5="b224c7392d521a49829488ab0f1120d9", pin=f"{_TV}.Caltech101")],
}

# Datasets without a stable public source: where their files come from.
MANUAL = {
    "icub": "iCubWorld 1.0 (IIT, Fanello et al. 2013) is no longer served at a stable URL",
    "pubfig83-id": "PubFig83 (Pinto et al. 2011) is distributed on request / from mirrors only",
    "sufrw-id": "SUFR-W (Leibo et al. 2014) is distributed by the CBMM on request",
    "timit80": "TIMIT is licensed by the LDC (LDC93S1); compute the features from your copy",
}


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _stamps(root: Path) -> dict:
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _stamp(root: Path, name: str, path: Path, digest: str) -> None:
    stamps = _stamps(root)
    st = path.stat()
    stamps[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": digest}
    tmp = root / f"{STAMP}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(stamps, indent=1))
    os.replace(tmp, root / STAMP)


def verify(root: Path, r: Remote, path: Path | None = None, key: str = "", fix: str = "") -> str:
    """Check `path` (default `root/r.name`) against r's pinned checksum; return its digest.

    A file verified before (same size and mtime) is not hashed again. Raises `CorruptData`
    naming the file on a mismatch.
    """
    path = path or root / r.name
    algo, want = r.digest or ("sha256", None)
    st = path.stat()
    seen = _stamps(root).get(r.name)
    if (seen and path == root / r.name and seen["size"] == st.st_size
            and seen["mtime_ns"] == st.st_mtime_ns and (want is None or seen["digest"] == want)):
        return seen["digest"]
    got = file_digest(path, algo)
    if want is not None and got != want:
        named = path if path.name == r.name else root / r.name  # the file, not its .part
        raise CorruptData(f"{named}: {algo} {got} does not match the official {want} "
                          f"({st.st_size} bytes; corrupt or truncated); "
                          + (fix or f"delete it and run 'asymbp datasets download {key}'"))
    if path == root / r.name and want is not None:
        try:  # remember it: `asymbp datasets` then does not hash big archives every time
            _stamp(root, r.name, path, got)
        except OSError:
            pass
    return got


def check_mirror(mirror: str | None) -> None:
    """A mirror is a base URL that urllib can fetch: http(s):// or file:// (a local copy)."""
    given = mirror or os.environ.get("ASYMBP_MIRROR")
    url = urllib.parse.urlsplit(given or "")
    scheme = url.scheme.lower()
    if given and (scheme not in ("http", "https", "file") or (scheme != "file" and not url.netloc)):
        where = "--mirror" if mirror else "$ASYMBP_MIRROR"
        raise AsymbpError(f"{where} {given!r} is not a URL; give an http://, https:// or "
                          "file:// base URL (files are fetched from <URL>/<KEY>/<file>)")


def url_for(key: str, r: Remote, mirror: str | None) -> str:
    mirror = mirror or os.environ.get("ASYMBP_MIRROR")
    return f"{mirror.rstrip('/')}/{key}/{r.name}" if mirror else r.url


def fetch(url: str, part: Path, progress: bool = True, timeout: float = 60) -> None:
    """Download `url` into `part`, resuming from its current size with an HTTP Range request.

    Raises `CorruptData` if the server closes before sending every byte it announced (the
    partial file is kept, so running again resumes).
    """
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "asymbp"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # already complete
            return
        raise MissingData(f"{url}: HTTP {err.code} {err.reason}; check the URL or ASYMBP_MIRROR "
                          "and try again") from None
    except (urllib.error.URLError, OSError) as err:
        raise MissingData(f"{url}: cannot connect ({getattr(err, 'reason', err)}); check your "
                          "network or set ASYMBP_MIRROR and run again to resume") from None
    with resp:
        if have and resp.status != 206:  # the server ignored Range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        got = have
        with open(part, "ab" if have else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name[:-5], disable=not progress, leave=False) as bar:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (OSError, urllib.error.URLError) as err:  # e.g. IncompleteRead, reset
                    block, error = b"", err
                else:
                    error = None
                if not block:
                    break
                out.write(block)
                got += len(block)
                bar.update(len(block))
    if total is not None and got < total:
        raise CorruptData(f"{part}: download truncated at {got} of {total} bytes"
                          f"{' (' + str(error) + ')' if error else ''}; run the same command "
                          "again to resume")


def download(key: str, data_dir: str | os.PathLike | None = None, mirror: str | None = None,
             progress: bool = True, log=print) -> list[Path]:
    """Download and verify dataset `key`'s files into `<data root>/<key>/`; return their paths.

    Files already there and verified are skipped. Raises `AsymbpError` (one line) for a dataset
    with no public source, naming the files to put where.
    """
    key = check_key(key)
    check_mirror(mirror)
    if key.startswith("npz:"):
        raise AsymbpError(f"{key} is a local file, there is nothing to download; give the path of "
                          "an existing .npz")
    root = data_root(data_dir) / key
    if key not in SOURCES:
        info = DATASETS[key]
        why = MANUAL.get(key, "it installs with the package" if info.packaged else "no public source")
        if info.packaged:
            raise AsymbpError(f"{key} needs no download ({why}); use it directly")
        raise AsymbpError(f"{key} cannot be downloaded automatically ({why}); put "
                          f"{info.files} in {root}")
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in SOURCES[key]:
        dest, part = root / r.name, root / f"{r.name}.part"
        if dest.exists():
            verify(root, r, key=key)  # a file put there by hand must be the official one too
            log(f"{key}: {r.name} already there, verified")
            paths.append(dest)
            continue
        url = url_for(key, r, mirror)
        log(f"{key}: downloading {r.name} from {url}")
        fetch(url, part, progress)
        try:
            digest = verify(root, r, part, key=key,
                            fix=f"the download from {url} was removed; check that source (or "
                                "ASYMBP_MIRROR) and run again")
        except CorruptData:
            part.unlink(missing_ok=True)  # a wrong file is not resumable: start over next time
            raise
        os.replace(part, dest)
        _stamp(root, r.name, dest, digest)
        if r.digest is None:
            log(f"{key}: {r.name} has no pinned checksum; its sha256 is {digest}")
        paths.append(dest)
    return paths


def status(key: str, data_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(`ready` / `missing` / `corrupt`, a short reason) for dataset `key` on this machine."""
    info = DATASETS[key]
    if info.packaged:
        return "ready", "installed with the package"
    root = data_root(data_dir) / key
    if not root.is_dir():
        return "missing", f"{root} does not exist"
    try:
        for r in SOURCES.get(key, []):
            if (root / r.name).is_file():
                verify(root, r, key=key)
        for r in KNOWN.get(key, []):
            if (p := find(root, r.name, 1)) is not None and p.is_file():
                verify(root, r, p, key=key)
    except CorruptData as err:
        return "corrupt", str(err)
    try:
        if info.check:
            info.check(root)
    except MissingData as err:
        partial = [p.name for p in root.glob("*.part")]
        return "missing", (f"partial download {partial[0]}: run download again to resume"
                           if partial else str(err))
    except CorruptData as err:
        return "corrupt", str(err)
    return "ready", "source files present" + (", preprocessed cache built" if has_cache(root) else "")


# Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from Zalando's official mirror. The MD5s are the
# ones torchvision pins (torchvision/datasets/mnist.py, `FashionMNIST.resources`, pytorch/vision)
# and Zalando publishes in the download table of its README (github.com/zalandoresearch/
# fashion-mnist). The mirror is an S3 website endpoint: http only.
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_PIN = f"{_TV}.FashionMNIST (and the zalandoresearch/fashion-mnist README)"
SOURCES["fashion-mnist"] = [
    Remote(name, _FASHION + name, md5=md5, pin=_FASHION_PIN)
    for name, md5 in [
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ]
]
