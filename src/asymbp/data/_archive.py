"""Archives as the original sources distribute them (.tar, .tar.gz, .tgz, .zip), packed or not.

`unpacked(root, marker, archives)` returns the folder `marker` under `root`, extracting the first
archive found if the folder is not there yet. Extraction goes to a temporary folder that is
renamed into place, so an interrupted or corrupt extraction leaves nothing half-unpacked.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from ._errors import CorruptData, MissingData


def find(root: Path, name: str, depth: int = 3) -> Path | None:
    """The shallowest path called `name` under `root` (at most `depth` levels down), or None."""
    level = [root]
    for _ in range(depth + 1):
        for d in level:
            if (d / name).exists():
                return d / name
        level = [c for d in level if d.is_dir() for c in sorted(d.iterdir())
                 if c.is_dir() and not c.name.startswith(".")]
    return None


def extract(archive: Path, dest: Path, key: str, keep: Callable[[str], bool] | None = None) -> None:
    """Extract `archive` into `dest` (atomically per top-level entry); `keep` filters members."""
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".unpack-"))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z:
                    bad = z.testzip()
                    if bad:
                        raise zipfile.BadZipFile(f"bad CRC in member {bad}")
                    z.extractall(tmp, [m for m in z.namelist() if keep is None or keep(m)])
            else:
                with tarfile.open(archive) as t:
                    members = [m for m in t if keep is None or keep(m.name)]
                    kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    t.extractall(tmp, members, **kw)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
            raise CorruptData(
                f"{archive}: corrupt or truncated archive ({type(err).__name__}: {err}); delete it "
                f"and run 'asymbp datasets download {key}' (or copy the original file again)"
            ) from None
        for entry in tmp.iterdir():
            target = dest / entry.name
            if not target.exists():  # else another process unpacked it first: keep theirs
                entry.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unpacked(root: Path, marker: str, archives: list[str], key: str, where: str,
             keep: Callable[[str], bool] | None = None) -> Path:
    """The folder or file `marker` under `root`, unpacking one of `archives` first if needed.

    Archives may nest (Caltech-101's zip holds a .tar.gz): each one found is unpacked in turn
    until `marker` appears. `where` is the one-line hint of which files to put where.
    """
    if not root.is_dir():
        raise MissingData(f"{key}: data folder {root} does not exist; {where}")
    done: set[Path] = set()
    while True:
        hit = find(root, marker)
        if hit is not None:
            return hit
        todo = [p for name in archives if (p := find(root, name)) is not None and p not in done]
        if not todo:
            raise MissingData(f"{key}: neither {marker}/ nor {' / '.join(archives)} found under "
                              f"{root}; {where}")
        done.add(todo[0])
        extract(todo[0], todo[0].parent, key, keep)
