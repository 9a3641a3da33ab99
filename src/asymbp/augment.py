"""Data augmentation on the device, inside the training loop (DESIGN §9a: BioTorch's protocols).

Every function takes a batch `x` (N, C, H, W) of float images on any device and returns a new
batch on the same device, in the same memory format (channels_last stays channels_last). The
random draws come from `gen`, a `torch.Generator` on any device (None: torch's global one), so
the same generator state gives the same batch. Every example gets its own draw and the work is
vectorised: one gather or one batched matrix product for the whole batch, no loop over examples.

    random_crop_flip          CIFAR training: pad 4 with zeros, a random 32×32 window, then a
                              horizontal flip with probability 1/2 (RandomCrop(32, padding=4)
                              + RandomHorizontalFlip)
    random_resized_crop_flip  ImageNet training: torchvision's RandomResizedCrop(224) + flip
    resize_center_crop        ImageNet test: Resize(256) (the shorter side), CenterCrop(224)
    resize                    BioTorch's MNIST LeNet: 28×28 -> Resize((32, 32))

Resizing is bilinear with antialiasing: the triangle filter, widened by the down-scaling factor,
that PIL applies to BioTorch's PIL images and torchvision to tensors (`antialias=True`). The crops
follow torchvision's definitions; only the order of the random draws differs (one draw per
quantity for the whole batch instead of one Python call per image), so a batch is a sample of the
same distribution, not torchvision's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import AsymbpError

Fill = float | Sequence[float] | Tensor


def _check_batch(x: Tensor, what: str) -> None:
    if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise AsymbpError(f"{what} takes a batch of float images (N, C, H, W), got {shape}; "
                          "augment image data only (not vectors)")


def _like(out: Tensor, x: Tensor) -> Tensor:
    """`out` in `x`'s memory format: an NHWC batch stays NHWC (indexing returns NCHW)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _rand(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device,
          dtype=torch.float32) -> Tensor:
    """Uniform [0, 1) draws made on the generator's device, then moved to `device`."""
    where = gen.device if gen is not None else device
    return torch.rand(shape, generator=gen, device=where, dtype=dtype).to(device)


def _size2(size: int | Sequence[int], what: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise AsymbpError(f"{what} size must be positive, got {size}")
    return int(h), int(w)


# ---- CIFAR: random crop of the zero-padded image + horizontal flip -------------------------


def crop_flip_params(n: int, pad: int, height: int, width: int, size: tuple[int, int],
                     gen: torch.Generator | None = None, device="cpu"
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """The draws of `random_crop_flip`: top, left (in the padded image) and flip, each (n,).

    top ~ U{0..H+2·pad−h}, left ~ U{0..W+2·pad−w} (torchvision's RandomCrop), flip ~ Bernoulli(½).
    """
    device = torch.device(device)
    h, w = size
    span_y, span_x = height + 2 * pad - h + 1, width + 2 * pad - w + 1
    if span_y < 1 or span_x < 1:
        raise AsymbpError(f"a {h}×{w} crop does not fit {height}×{width} images padded by {pad}; "
                          "give a crop no larger than the padded image")
    u = _rand((3, n), gen, device, torch.float64)
    top = (u[0] * span_y).long().clamp_(max=span_y - 1)  # floor(U·k) is uniform on 0..k−1
    left = (u[1] * span_x).long().clamp_(max=span_x - 1)
    return top, left, u[2] < 0.5


def _pad(x: Tensor, pad: int, fill: Fill) -> Tensor:
    if not torch.is_tensor(fill) and isinstance(fill, (int, float)):
        return F.pad(x, (pad, pad, pad, pad), value=float(fill))
    n, c, h, w = x.shape
    value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if value.numel() not in (1, c):
        raise AsymbpError(f"fill has {value.numel()} values for {c}-channel images; give one "
                          "value or one per channel")
    out = value.reshape(1, -1, 1, 1).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    out[:, :, pad:pad + h, pad:pad + w] = x
    return out


def random_crop_flip(x: Tensor, pad: int = 4, gen: torch.Generator | None = None, *,
                     size: int | Sequence[int] | None = None, fill: Fill = 0.0,
                     flip: bool = True) -> Tensor:
    """CIFAR's augmentation: pad, take a random window, mirror it left-right with probability ½.

    Arguments:
        x: (N, C, H, W) float images.
        pad: pixels added on every side.
        gen: the generator of the draws (`crop_flip_params`, in that order).
        size: the window (h, w) or h = w; default: the input's size.
        fill: the padding value, one or one per channel. Zero is BioTorch's (black, before its
            normalisation); on normalised data give `-mean / std` for the same black border.
        flip: mirror with probability ½ (False: crop only, the flip draws still made).

    Returns:
        (N, C, h, w) on x's device: out[n, :, r, s] = padded[n, :, top + r, left + s'] with
        s' = w − 1 − s for a flipped example, s otherwise.
    """
    _check_batch(x, "random_crop_flip")
    if int(pad) < 0:
        raise AsymbpError(f"padding must be >= 0 pixels, got {pad}")
    n, c, height, width = x.shape
    h, w = _size2(size if size is not None else (height, width), "crop")
    top, left, flips = crop_flip_params(n, int(pad), height, width, (h, w), gen, x.device)
    padded = _pad(x, int(pad), fill)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, h)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (N, w)
    if flip:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, h, w)
    return _like(out, x)


# ---- ImageNet: torchvision's RandomResizedCrop + flip; Resize + CenterCrop -------------------


def resized_crop_params(n: int, height: int, width: int, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), gen: torch.Generator | None = None, device="cpu",
                        tries: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The boxes of torchvision's `RandomResizedCrop.get_params`, n at once: top, left, h, w
    (int64, (n,)) and the flips (bool, (n,)).

    Up to `tries` candidates per example: area ~ U(scale)·H·W, log aspect (w/h) ~ U(log ratio),
    w = round(sqrt(area·aspect)), h = round(sqrt(area/aspect)); the first that fits is placed
    uniformly; none fits: the centre crop of the largest box with an aspect inside `ratio`.
    """
    device = torch.device(device)
    lo, hi = float(scale[0]), float(scale[1])
    r_lo, r_hi = float(ratio[0]), float(ratio[1])
    if not (0 < lo <= hi) or not (0 < r_lo <= r_hi):
        raise AsymbpError(f"scale {tuple(scale)} and ratio {tuple(ratio)} must be (min, max) "
                          "ranges of positive numbers, e.g. scale (0.08, 1), ratio (3/4, 4/3)")
    u = _rand((n, tries, 2), gen, device, torch.float64)
    area = height * width * (lo + (hi - lo) * u[..., 0])
    aspect = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[..., 1])
    ws = torch.round(torch.sqrt(area * aspect)).long()  # round half to even, as Python's round
    hs = torch.round(torch.sqrt(area / aspect)).long()
    ok = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)  # (n, tries)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # the first candidate that fits
    found = ok.any(1)
    # Fallback (torchvision's): the whole image, trimmed to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < r_lo:
        fw, fh = width, int(round(width / r_lo))
    elif in_ratio > r_hi:
        fw, fh = int(round(height * r_hi)), height
    else:
        fw, fh = width, height
    w = torch.where(found, ws.gather(1, first)[:, 0], fw)
    h = torch.where(found, hs.gather(1, first)[:, 0], fh)
    v = _rand((3, n), gen, device, torch.float64)
    top = torch.where(found, (v[0] * (height - h + 1)).long().clamp_(max=height - h),
                      (height - fh) // 2)
    left = torch.where(found, (v[1] * (width - w + 1)).long().clamp_(max=width - w),
                       (width - fw) // 2)
    return top, left, h, w, v[2] < 0.5


def resize_weights(start: Tensor, length: Tensor, out_size: int, in_size: int,
                   dtype=torch.float32) -> Tensor:
    """(N, out_size, in_size) matrices resizing rows [start, start + length) of each example to
    `out_size` rows: bilinear with antialiasing (PIL's and torch's `antialias=True` filter).

    Output row u has its centre at c = s·(u + ½) in the crop, s = length / out_size; input row k
    gets weight max(0, 1 − |k + ½ − c| / max(s, 1)), zero outside the crop, normalised to sum 1.
    """
    s = (length.to(torch.float64) / out_size)[:, None, None]  # (N, 1, 1)
    center = s * (torch.arange(out_size, dtype=torch.float64, device=start.device)[None, :, None]
                  + 0.5)
    k = (torch.arange(in_size, device=start.device)[None, None, :] - start[:, None, None])
    wts = (1 - ((k + 0.5 - center) / s.clamp(min=1)).abs()).clamp_(min=0)
    wts = wts * ((k >= 0) & (k < length[:, None, None]))
    return (wts / wts.sum(-1, keepdim=True)).to(dtype)


def random_resized_crop_flip(x: Tensor, size: int | Sequence[int] = 224,
                             scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             gen: torch.Generator | None = None, *, flip: bool = True) -> Tensor:
    """ImageNet's training augmentation: torchvision's RandomResizedCrop(size, scale, ratio)
    (bilinear, antialiased) then a horizontal flip with probability ½.

    Each example's box is `resized_crop_params`; the resize is one batched product
    out = Rᵧ · x · Rₓᵀ with `resize_weights` (a flipped example's Rₓ has its rows reversed).

    Arguments:
        x: (N, C, H, W) float images (one size for the batch; a loader worker holding images
            of different sizes calls it on batches of one).
        size: output (h, w) or h = w.
        scale, ratio: torchvision's ranges of the crop's area fraction and aspect ratio w/h.
        gen: the generator of the draws.
        flip: mirror with probability ½.

    Returns:
        (N, C, h, w) on x's device.
    """
    _check_batch(x, "random_resized_crop_flip")
    n, c, height, width = x.shape
    oh, ow = _size2(size, "output")
    top, left, h, w, flips = resized_crop_params(n, height, width, scale, ratio, gen, x.device)
    ry = resize_weights(top, h, oh, height, x.dtype)  # (N, oh, H)
    rx = resize_weights(left, w, ow, width, x.dtype)  # (N, ow, W)
    if flip:
        rx = torch.where(flips[:, None, None], rx.flip(1), rx)
    out = ry[:, None] @ x.contiguous() @ rx.transpose(1, 2)[:, None]  # (N, C, oh, ow)
    return _like(out, x)


def resize(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """torchvision's Resize, bilinear and antialiased: an int resizes the shorter side to
    `size` (the longer one to int(size · long / short)), a pair (h, w) gives that size."""
    return _resize(x, size)


def _resize(x: Tensor, size: int | Sequence[int]) -> Tensor:
    _check_batch(x, "resize")
    height, width = x.shape[-2:]
    if isinstance(size, int):
        if size < 1:
            raise AsymbpError(f"resize size must be positive, got {size}")
        short, long = min(height, width), max(height, width)
        new_long = int(size * long / short)
        oh, ow = (new_long, size) if width <= height else (size, new_long)
    else:
        oh, ow = _size2(size, "resize")
    if (oh, ow) == (height, width):
        return x.clone()
    out = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)
    return _like(out, x)


def center_crop(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """torchvision's CenterCrop: the window starting at round((H − h)/2), round((W − w)/2)."""
    _check_batch(x, "center_crop")
    height, width = x.shape[-2:]
    h, w = _size2(size, "crop")
    if h > height or w > width:
        raise AsymbpError(f"a {h}×{w} centre crop does not fit {height}×{width} images; resize "
                          "them to at least the crop first")
    top, left = int(round((height - h) / 2)), int(round((width - w) / 2))
    return x[:, :, top:top + h, left:left + w].clone()


def resize_center_crop(x: Tensor, resize: int = 256, crop: int | Sequence[int] = 224) -> Tensor:
    """ImageNet's test transform: the shorter side resized to `resize`, then the centre crop."""
    return center_crop(_resize(x, resize), crop)
