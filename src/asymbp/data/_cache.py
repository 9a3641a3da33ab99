"""The preprocessed cache: arrays in one `.npz` next to the source files.

A cache file holds the arrays a loader built plus a fingerprint of the source files it read
(relative path, size, mtime). When the sources change, or `CACHE_VERSION` is bumped because the
preprocessing changed, the fingerprint no longer matches and the cache is rebuilt. Files are
written to a temporary name and renamed, so a crash never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

CACHE_VERSION = 1
_FP = "__fingerprint__"
_META = "__meta__"


def cache_path(root: Path, tag: str) -> Path:
    return root / f".asymbp-{tag}-v{CACHE_VERSION}.npz"


def fingerprint(root: Path, sources: Iterable[Path], tag: str) -> str:
    """A hash of (path relative to root, size, mtime) of every source file, plus the tag."""
    h = hashlib.sha1(f"{tag}|v{CACHE_VERSION}".encode())
    for p in sources:
        st = p.stat()
        rel = os.path.relpath(p, root)
        h.update(f"\n{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def read_cache(root: Path, tag: str, fp: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """The cached arrays and meta if the cache exists and matches `fp`, else None."""
    path = cache_path(root, tag)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if _FP not in f.files or str(f[_FP]) != fp:
                return None
            meta = json.loads(str(f[_META])) if _META in f.files else {}
            return {k: f[k] for k in f.files if k not in (_FP, _META)}, meta
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None  # unreadable cache: rebuild it


def write_cache(root: Path, tag: str, fp: str, arrays: dict[str, np.ndarray], meta: dict) -> Path | None:
    """Write the cache atomically (temporary name, then rename); None if root is read-only."""
    path = cache_path(root, tag)
    try:
        fd, tmp = tempfile.mkstemp(dir=root, prefix=path.name + ".", suffix=".tmp")
    except OSError:
        return None  # a read-only data folder still loads, just without a cache
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private; a cache is as readable as its data
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays, **{_FP: np.array(fp), _META: np.array(json.dumps(meta))})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cached(root: Path, tag: str, sources: list[Path],
           build: Callable[[], tuple[dict[str, np.ndarray], dict]]) -> tuple[dict[str, np.ndarray], dict]:
    """`build()`'s (arrays, meta), from the cache when it matches the sources, else built and cached."""
    fp = fingerprint(root, sources, tag)
    hit = read_cache(root, tag, fp)
    if hit is not None:
        return hit
    arrays, meta = build()
    write_cache(root, tag, fp, arrays, meta)
    return arrays, meta


def has_cache(root: Path) -> bool:
    return any(root.glob(f".asymbp-*-v{CACHE_VERSION}.npz")) if root.is_dir() else False
