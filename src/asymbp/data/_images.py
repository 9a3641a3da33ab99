"""Image files -> uint8 arrays for the `large` network: 119×119, RGB (grayscale lifted)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._errors import CorruptData

LARGE_SIZE = 119  # the paper's input size for the `large` network (Table 1)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff"}


def is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def decode(src: Path | bytes, size: int = LARGE_SIZE, name: str | None = None) -> np.ndarray:
    """Decode one image to (3, size, size) uint8; one-line `CorruptData` if it will not decode."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # decode JPEGs at a reduced scale: much faster
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise CorruptData(f"{name or src}: image will not decode ({err}); replace it with the "
                          "original file or delete it") from None


def decode_all(paths: list[Path], size: int = LARGE_SIZE, desc: str = "") -> np.ndarray:
    """Decode `paths` to (N, 3, size, size) uint8, with a progress bar for long lists."""
    from tqdm.auto import tqdm

    out = np.empty((len(paths), 3, size, size), np.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc or "decoding images", unit="img",
                               disable=len(paths) < 500, leave=False)):
        out[i] = decode(p, size)
    return out


def resize_array(x: np.ndarray, size: int = LARGE_SIZE) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, 3, size, size) uint8 with Pillow's bilinear resize."""
    out = np.empty((len(x), 3, size, size), np.uint8)
    for i, img in enumerate(x):
        im = Image.fromarray(img.transpose(1, 2, 0)).resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(im).transpose(2, 0, 1)
    return out


def sample_hash(paths: list[str]) -> str:
    """A short hash of a sample (relative file names), recorded in meta."""
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()[:16]
