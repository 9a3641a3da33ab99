"""What several test modules share: fixtures, and the writers of real files on disk.

Test modules never import each other: a helper that more than one of them needs lives here and
is handed out as a fixture of the same name (`def test_x(tmp_path, write_mnist): ...`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import math
import os
import pickle
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def keep_threads():
    """Every test gets back the torch thread count it started with: float results depend on it
    (a reduction split over threads is summed in another order), so a test that set it and
    left it would change the numbers of every test after it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests (much faster than two on a loaded
    machine), and for a test whose reference must run the kernels of one-thread workers; the
    previous setting comes back afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- dataset files, each written exactly as the original source distributes them --------------

RNG = np.random.default_rng(0)


def write_idx(path: Path, a: np.ndarray) -> None:
    """IDX: 0, 0, dtype 0x08 (ubyte), ndim; the sizes as big-endian uint32; then the bytes."""
    raw = bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_mnist(root: Path, n_train=60, n_test=20, gz=True) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    d = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", y)
        d[split] = (x, y)
    return d


def tar_folder(archive: Path, folder: Path, arcname: str) -> None:
    with tarfile.open(archive, "w:gz" if archive.name.endswith("gz") else "w") as t:
        t.add(folder, arcname=arcname)


def write_cifar(root: Path, hundred=False, packed=True, n=20) -> dict:
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    field = b"fine_labels" if hundred else b"labels"
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    out = {}
    for name in names + ["test" if hundred else "test_batch"]:
        x = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = list(RNG.integers(0, 100 if hundred else 10, n))
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, field: y, b"batch_label": name.encode()}, f, protocol=2)
        out[name] = (x, y)
    if packed:
        tar_folder(root / f"{'cifar-100' if hundred else 'cifar-10'}-python.tar.gz", folder, folder.name)
        import shutil

        shutil.rmtree(folder)
    return out


def write_svhn(root: Path, n=30) -> dict:
    import scipy.io

    root.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 1..10, 10 = digit 0
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, y)
    return out


def write_stl10(root: Path, n=12) -> dict:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        x = RNG.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
        # Stored column-major per channel: write (N, C, W, H) row-major.
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes((np.arange(n) % 10 + 1).astype(np.uint8).tobytes())
        out[split] = x
    (folder / "unlabeled_X.bin").write_bytes(b"\0" * (3 * 96 * 96))
    tar_folder(root / "stl10_binary.tar.gz", folder, "stl10_binary")
    import shutil

    shutil.rmtree(folder)
    return out


def write_image(path: Path, size=(6, 5), gray=False, color=None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if gray else "RGB"
    arr = RNG.integers(0, 256, (size[1], size[0]) + (() if gray else (3,)), dtype=np.uint8)
    if color is not None:
        arr[...] = color
    Image.fromarray(arr, mode).save(path)


_ENCODED: dict[tuple[str, bool, int], bytes] = {}


def encoded(ext: str, gray: bool, variant: int) -> bytes:
    """A small real image file's bytes (a few variants, encoded once: trees of thousands stay fast)."""
    from PIL import Image

    k = (ext, gray, variant)
    if k not in _ENCODED:
        buf = io.BytesIO()
        arr = np.random.default_rng(variant).integers(0, 256, (5, 6) + (() if gray else (3,)), dtype=np.uint8)
        Image.fromarray(arr, "L" if gray else "RGB").save(buf, format=Image.registered_extensions()[ext])
        _ENCODED[k] = buf.getvalue()
    return _ENCODED[k]


def write_tree(base: Path, counts: dict[str, int], ext=".jpg", gray_every=4) -> None:
    """One folder per class with `counts[class]` images (some grayscale, JPEG and PNG mixed)."""
    for c, n in counts.items():
        (base / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            e = ext if i % 3 else ".png"
            (base / c / f"{c}_{i:04d}{e}").write_bytes(encoded(e, i % gray_every == 0, i % 7))


def write_flowers102(root: Path, n=16, packed=True) -> dict:
    import scipy.io

    root.mkdir(parents=True)
    labels = (np.arange(n) % 4 + 1).reshape(1, -1)  # classes 1..4
    for i in range(1, n + 1):
        write_image(root / "jpg" / f"image_{i:05d}.jpg")
    ids = np.arange(1, n + 1)
    trn, val, tst = ids[0::4], ids[1::4], ids[np.isin(ids % 4, [3, 0])]
    scipy.io.savemat(root / "imagelabels.mat", {"labels": labels})
    scipy.io.savemat(root / "setid.mat", {"trnid": trn.reshape(1, -1), "valid": val.reshape(1, -1),
                                          "tstid": tst.reshape(1, -1)})
    if packed:
        tar_folder(root / "102flowers.tgz", root / "jpg", "jpg")
        import shutil

        shutil.rmtree(root / "jpg")
    return {"labels": labels.ravel(), "trn": trn, "val": val, "tst": tst}


def write_flowers17(root: Path) -> dict:
    """Images of classes 0, 1, 16 only (ids 1..80, 81..160, 1281..1360), split 1 over them."""
    import scipy.io

    root.mkdir(parents=True)
    trn, val, tst = [], [], []
    for c in (0, 1, 16):
        ids = np.arange(c * 80 + 1, c * 80 + 7)  # 6 images of the class used by split 1
        trn += list(ids[:3]); val += list(ids[3:4]); tst += list(ids[4:6])  # noqa: E702
        for i in ids:
            write_image(root / "jpg" / f"image_{i:04d}.jpg")
    d = {f"{k}{s}": np.array(v).reshape(1, -1) for s in (1, 2, 3)
         for k, v in (("trn", trn), ("val", val), ("tst", tst))}
    scipy.io.savemat(root / "datasplits.mat", d)
    return {"trn": trn, "val": val, "tst": tst}


# ---- a download mirror on 127.0.0.1 -------------------------------------------------------


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support; `/short/...` announces more bytes than it sends."""

    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        rel = self.path.lstrip("/")
        short, norange = rel.startswith("short/"), rel.startswith("norange/")
        path = Path(self.directory) / rel.split("/", 1)[1] if short or norange else Path(self.directory) / rel
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = None if norange else self.headers.get("Range")
        Handler.ranges.append(self.headers.get("Range"))
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if short else body)


@pytest.fixture
def server(tmp_path):
    """A mirror on 127.0.0.1 (random port) serving tmp_path/mirror/<key>/<file>."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(mirror)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    Handler.ranges = []
    yield mirror, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def served_ranges(server):
    """The Range header of every request the mirror of `server` has answered (None: none)."""
    return Handler.ranges


# ---- download checksums ---------------------------------------------------------------------


def pin(monkeypatch, key: str, folder: Path, algo: str = "md5", wrong: str | None = None):
    """Pin SOURCES[key] to the checksums of the files served from `folder`."""
    from asymbp.data import download as dl

    remotes = []
    for r in dl.SOURCES[key]:
        digest = hashlib.new(algo, (folder / r.name).read_bytes()).hexdigest()
        if r.name == wrong:
            digest = "0" * len(digest)
        fields = {"md5": digest, "sha256": None} if algo == "md5" else {"md5": None, "sha256": digest}
        remotes.append(dataclasses.replace(r, **fields))
    monkeypatch.setitem(dl.SOURCES, key, remotes)


# ---- results-database rows --------------------------------------------------------------------


def some_runs(tmp_path, **kw):
    """The planned runs of a small grid over a tiny npz dataset written to `tmp_path`."""
    from asymbp.sweep import plan

    path = tmp_path / "d.npz"
    x = np.zeros((4, 8), np.float32)
    np.savez(path, x_train=x, y_train=np.arange(4) % 2, x_test=x, y_test=np.arange(4) % 2)
    return plan(methods=["SGD", "uSF+BN"], datasets=[f"npz:{path}"], lr_mults=[10, 1],
                base={"model": "mlp", "epochs": 2}, **kw)


def result(best, diverged=False):
    """A finished run's result row."""
    return {"test_error": best + 1, "best_test_error": best, "best_epoch": 2,
            "diverged": diverged, "diverged_epoch": 2 if diverged else None, "seconds": 1.5,
            "params": 10, "version": "0.1.0", "commit": "abc", "host": "h"}


def epoch(n, test=10.0):
    """Epoch `n`'s metrics row."""
    return {"epoch": n, "lr": 0.005, "batch_size": 100, "train_loss": 0.5, "train_error": 20.0,
            "test_error": test, "seconds": 0.1,
            "alignment": [{"layer": "fc.0", "scheme": "uSF", "angle": 30.0 + n,
                           "sign_concordance": 1.0, "norm_ratio": 0.5, "grad_angle": math.nan}]}


def results_db(path: Path, keep_open: bool = False):
    """A results database with 4 planned runs (experiment "grid"), one finished with 2 epochs;
    returns the open Store when `keep_open` (its -wal then still holds everything)."""
    from asymbp import store

    runs = some_runs(path.parent)
    s = store.Store(path)
    s.add_runs(runs)
    s.start(runs[0].key, "h", "cpu", "0.1.0", "abc")
    s.add_epoch(runs[0].key, epoch(1))
    s.add_epoch(runs[0].key, epoch(2))
    s.finish(runs[0].key, result(3.0))
    if keep_open:
        return s
    s.close()
    return None


def write_vectors(path: Path, n: int, m: int, seed: int) -> str:
    """npz:PATH of `n` train / `m` test 64-dim Gaussian vectors, 10 classes each marked by a
    +2 in its own feature (learnable by the "mlp" network in a few epochs)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n + m)
    x = rng.normal(size=(n + m, 64)).astype(np.float32)
    x[np.arange(n + m), y * 6] += 2.0
    np.savez(path, x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:])
    return f"npz:{path}"


# ---- waiting on a sweep in another process ------------------------------------------------


def wait_for(db, predicate, timeout):
    """The runs of results database `db` (asymbp.store.load) once `predicate(runs)` holds;
    an AssertionError after `timeout` seconds (the database may not exist yet)."""
    import os
    import time

    from asymbp import store

    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.exists(db):
            try:
                df = store.load(db)
                if predicate(df):
                    return df
            except Exception:  # noqa: BLE001 - the database is being created
                pass
        time.sleep(0.05)
    raise AssertionError(f"condition not reached in {timeout}s")


# Every helper above is handed out as a fixture of its own name (session-wide: each is a plain
# function with no state), so a test asks for `write_mnist` like for `tmp_path`.
def _hand_out(helper):
    return pytest.fixture(scope="session", name=helper.__name__)(lambda: helper)


for _helper in (write_mnist, write_cifar, write_svhn, write_stl10, write_tree, write_flowers102,
                write_flowers17, tar_folder, pin, some_runs, result, epoch, results_db,
                write_vectors, wait_for):
    globals()["_fixture_" + _helper.__name__] = _hand_out(_helper)
