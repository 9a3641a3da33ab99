"""Datasets too large to hold in memory (ImageNet): JPEG files decoded batch by batch by
`torch.utils.data.DataLoader` workers, never the whole set at once.

A `StreamedDataset` holds, per split, only an index of its files (`ImageFiles`: names, byte
offsets into an archive or paths in a folder, labels), never a decoded image. `train()` sees
its splits as `StreamedImages`, a lazy stand-in for an (N, 3, crop, crop) tensor on the device:

    x.batches(shares, epoch, train=True)   # the loader's (xb, yb) for these mini-batches
    x[idx]                                 # a few examples decoded here (BN pass, alignment)

Transforms (torchvision's, on Pillow images, as BioTorch applies them):

    train  RandomResizedCrop(crop) + RandomHorizontalFlip: the box drawn by
           `asymbp.augment.resized_crop_params` from a generator seeded by (seed, epoch,
           index), so an example's crop depends on nothing else (not the worker, not the
           batch): the same run, epoch and image give the same crop
    eval   Resize(resize) of the shorter side, then CenterCrop(crop)

Both resize with Pillow's bilinear filter (antialiased: widened when shrinking). Batches travel
as uint8 (4× less to copy than float) and are normalised on the device with the dataset's
mean and std (ImageNet's standard ones: `asymbp.data.imagenet.MEAN`, `STD`).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ._errors import CorruptData


@dataclass
class ImageFiles:
    """The files of one split: `names` (N,) bytes (paths relative to `source`, or member
    names), `labels` (N,) int64; with `offsets` / `sizes` the images are byte ranges of the
    archive `source` (read with one pread each), without them files under the folder
    `source`. Plain arrays: a forked loader worker shares them without copying."""

    source: Path
    names: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray | None = None
    sizes: np.ndarray | None = None
    _fd: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        """The encoded bytes of image `i`."""
        if self.offsets is None:
            return (self.source / self.names[i].decode()).read_bytes()
        if self._fd is None or self._fd[0] != os.getpid():  # one descriptor per process
            self._fd = (os.getpid(), os.open(self.source, os.O_RDONLY))
        data = os.pread(self._fd[1], int(self.sizes[i]), int(self.offsets[i]))
        if len(data) != int(self.sizes[i]):
            raise CorruptData(f"{self.source}: truncated, {self.names[i].decode()} ends past the "
                              "end of the file; copy the original archive again")
        return data

    def __getstate__(self):  # a spawned worker opens its own descriptor
        return {**self.__dict__, "_fd": None}


def decode(data: bytes, name: str):
    """JPEG (or any Pillow format) bytes -> an RGB Pillow image (grayscale and CMYK converted);
    the one-line `CorruptData` when it will not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise CorruptData(f"{name}: image will not decode ({err}); replace it with the "
                          "original file") from None


def example_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one example's augmentation: a hash of (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
               .astype(np.uint64) @ np.array([1 << 31, 1], np.uint64))


def train_transform(im, crop: int, gen):
    """torchvision's RandomResizedCrop(crop) + RandomHorizontalFlip on a Pillow image, with
    the box (and the flip) of `asymbp.augment.resized_crop_params` drawn from `gen`."""
    from PIL import Image

    from ..augment import resized_crop_params

    width, height = im.size
    top, left, h, w, flip = (int(v[0]) for v in resized_crop_params(1, height, width, gen=gen))
    im = im.crop((left, top, left + w, top + h)).resize((crop, crop), Image.BILINEAR)
    return im.transpose(Image.FLIP_LEFT_RIGHT) if flip else im


def eval_transform(im, resize: int, crop: int):
    """torchvision's Resize(resize) (the shorter side; the longer int(resize·long/short)) +
    CenterCrop(crop) (the window at round((H − crop)/2), round((W − crop)/2))."""
    from PIL import Image

    width, height = im.size
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    if size != (width, height):
        im = im.resize(size, Image.BILINEAR)
    width, height = im.size
    top, left = int(round((height - crop) / 2)), int(round((width - crop) / 2))
    return im.crop((left, top, left + crop, top + crop))


def to_chw(im) -> "object":
    """A Pillow RGB image -> a (3, H, W) uint8 tensor."""
    import torch

    return torch.from_numpy(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy())


class Examples:
    """A torch map-style dataset over keys (train, epoch, index): example `index` of `files`
    decoded and transformed -> ((3, crop, crop) uint8 tensor, label)."""

    def __init__(self, files: ImageFiles, seed: int, crop: int, resize: int):
        self.files, self.seed, self.crop, self.resize = files, seed, crop, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[bool, int, int]):
        import torch

        train, epoch, i = key
        im = decode(self.files.read(i), f"{self.files.source}:{self.files.names[i].decode()}")
        if train:
            gen = torch.Generator().manual_seed(example_seed(self.seed, epoch, i))
            im = train_transform(im, self.crop, gen)
        else:
            im = eval_transform(im, self.resize, self.crop)
        return to_chw(im), int(self.files.labels[i])


@dataclass
class StreamedDataset:
    """A dataset read from its files batch by batch (see the module docstring).

    Attributes:
        key, num_classes, model, meta: as `asymbp.data.Dataset`'s.
        train, test: the splits' `ImageFiles`.
        crop, resize: the transforms' sizes (224 and 256 for ImageNet).
        mean, std: per-channel normalisation of the [0, 1] pixels.
    """

    key: str
    train: ImageFiles
    test: ImageFiles
    num_classes: int
    model: str
    crop: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    meta: dict = field(default_factory=dict)
    streamed = True  # what train() asks (an in-memory Dataset has no such attribute)

    @property
    def y_train(self) -> np.ndarray:
        return self.train.labels

    @property
    def y_test(self) -> np.ndarray:
        return self.test.labels

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.crop, self.crop)

    def images(self, split: str, idx: np.ndarray | None, *, seed: int, device, workers: int
               ) -> "StreamedImages":
        """Split `split` ("train" or "test"), or the examples `idx` of it, as `StreamedImages`."""
        files = self.train if split == "train" else self.test
        idx = np.arange(len(files)) if idx is None else np.asarray(idx, np.int64)
        return StreamedImages(Examples(files, seed, self.crop, self.resize), idx, device,
                              workers, self.mean, self.std)


@dataclass
class StreamedImages:
    """Examples `idx` of a split as a lazy (N, 3, crop, crop) batch on `device`: what the
    training loop indexes, decoded only when asked (see the module docstring)."""

    examples: Examples
    idx: np.ndarray  # positions -> the split's example indices
    device: object
    workers: int
    mean: tuple
    std: tuple
    layout: Callable = None  # the run's memory format, applied per batch (None: as it is)
    ndim = 4

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def shape(self) -> tuple[int, ...]:
        c = self.examples.crop
        return (len(self.idx), 3, c, c)

    def labels(self):
        """The labels (N,) int64 on the device."""
        import torch

        return torch.as_tensor(self.examples.files.labels[self.idx]).to(self.device)

    def with_layout(self, fn: Callable) -> "StreamedImages":
        return replace(self, layout=fn)

    def to_device(self, xb):
        """A uint8 batch (B, 3, H, W) -> normalised float32 on the device, in the layout."""
        import torch

        xb = xb.to(self.device, non_blocking=True).float().div_(255)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        xb = (xb - mean) / std
        return xb if self.layout is None else self.layout(xb)

    def batches(self, positions: list, epoch: int = 0, train: bool = False) -> Iterator:
        """(xb, yb) on the device for each list of positions, decoded by `workers` loader
        processes (0: here); `train`: the training transform of `epoch`."""
        import torch
        from torch.utils.data import DataLoader

        if not len(positions):
            return
        keys = _Keys(self, positions, train, epoch)
        pin = getattr(self.device, "type", str(self.device)) == "cuda"
        loader = DataLoader(self.examples, batch_sampler=keys, num_workers=self.workers,
                            pin_memory=pin, persistent_workers=False)
        for xb, yb in _started(loader):
            yield self.to_device(xb), yb.to(self.device, non_blocking=True)

    def __getitem__(self, pos):
        """Examples at `pos` (a slice or an index tensor/array), test-transformed, decoded
        here: a few examples (the BN pass's, the alignment's batch)."""
        import torch

        items = [self.examples[(False, 0, int(self.idx[p]))] for p in self._positions(pos)]
        return self.to_device(torch.stack([x for x, _ in items]))

    def _positions(self, pos) -> np.ndarray:
        """A slice, an index tensor (on any device) or array -> positions (K,)."""
        if isinstance(pos, slice):
            return np.arange(len(self.idx))[pos]
        return np.asarray(pos.cpu() if hasattr(pos, "cpu") else pos).reshape(-1)


def _started(loader):
    """`iter(loader)`, its worker processes started even in a daemonic process (a sweep's
    worker, `asymbp.sweep.local`), which multiprocessing forbids children: the flag is lifted
    while they start. They are daemonic themselves and watch their parent, so they still end
    with it."""
    import multiprocessing as mp

    me = mp.current_process()
    if not (loader.num_workers and me.daemon):
        return iter(loader)
    me.daemon = False
    try:
        return iter(loader)
    finally:
        me.daemon = True


class _Keys:
    """The loader's batch sampler: each mini-batch's keys (train, epoch, index), made as the
    loader asks for them (an epoch of ImageNet is 1.28 M keys: never a list of them all)."""

    def __init__(self, images: StreamedImages, positions: list, train: bool, epoch: int):
        self.images, self.positions, self.train, self.epoch = images, positions, train, epoch

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self):
        idx = self.images.idx
        for b in self.positions:
            yield [(self.train, self.epoch, int(idx[p])) for p in self.images._positions(b)]
