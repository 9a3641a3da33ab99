"""The on-device augmentations (asymbp.augment) against independent computations.

Crops and flips are checked window by window against a per-example loop over a NumPy-padded
image; the resized crops against `F.interpolate` of each crop on its own (torch's antialiased
bilinear kernel, not asymbp's matrices); the random boxes against a Python transcription of
torchvision's `RandomResizedCrop.get_params`, in distribution (means within 5 standard errors:
a false alarm about once in 3 million runs).
"""

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asymbp import augment as A
from asymbp.errors import AsymbpError

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def coded(n, c, h, w):
    """Images whose every value says where it came from (and none is 0, the padding)."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).reshape(n, c, h, w)


def crop_oracle(x, pad, size, top, left, flips, fill):
    """Pad each image with NumPy, cut the window, mirror it: one example at a time."""
    out = []
    for n in range(len(x)):
        img = x[n].numpy()
        padded = np.stack([np.pad(ch, pad, constant_values=f) for ch, f in zip(img, fill)])
        win = padded[:, top[n]:top[n] + size[0], left[n]:left[n] + size[1]]
        out.append(win[:, :, ::-1] if flips[n] else win)
    return np.stack(out)


@pytest.mark.parametrize("size,fill", [(None, 0.0), ((5, 6), (-1.0, -2.0))])
def test_crops_are_windows_of_the_padded_image(size, fill):
    x = coded(12, 2, 8, 8)
    out = A.random_crop_flip(x, 4, gen(3), size=size, fill=fill)
    hw = size or (8, 8)
    top, left, flips = A.crop_flip_params(12, 4, 8, 8, hw, gen(3))  # the same draws
    fills = fill if isinstance(fill, tuple) else (fill, fill)
    want = crop_oracle(x, 4, hw, top.tolist(), left.tolist(), flips.tolist(), fills)
    assert out.shape == (12, 2, *hw)
    np.testing.assert_array_equal(out.numpy(), want)  # a gather: exact
    assert 0 < flips.sum() < 12 and len(set(zip(top.tolist(), left.tolist()))) > 1


def test_flip_mirrors_exactly_the_flagged_examples():
    x = torch.randn(64, 3, 5, 7)
    out = A.random_crop_flip(x, 0, gen(1))  # no padding: the only window is the image
    flips = A.crop_flip_params(64, 0, 5, 7, (5, 7), gen(1))[2]
    for n in range(64):
        torch.testing.assert_close(out[n], x[n].flip(-1) if flips[n] else x[n], rtol=0, atol=0)
    kept = A.random_crop_flip(x, 0, gen(1), flip=False)
    torch.testing.assert_close(kept, x, rtol=0, atol=0)


def test_crop_and_flip_statistics():
    n = 36_000
    top, left, flips = A.crop_flip_params(n, 4, 32, 32, (32, 32), gen(7))
    expect = n / 9  # offsets 0..8, each with probability 1/9
    sd = math.sqrt(n * (1 / 9) * (8 / 9))
    for draws in (top, left):
        counts = torch.bincount(draws, minlength=9)
        assert len(counts) == 9
        assert ((counts - expect).abs() < 5 * sd).all(), counts
    assert abs(flips.double().mean() - 0.5) < 5 * 0.5 / math.sqrt(n)
    # top, left and flip are independent draws: their correlations are sampling noise
    c = np.corrcoef(np.stack([top.numpy(), left.numpy(), flips.numpy()]))
    assert np.abs(c[np.triu_indices(3, 1)]).max() < 5 / math.sqrt(n)


def test_the_same_generator_state_gives_the_same_batch():
    x = torch.randn(16, 3, 32, 32)
    for f in (lambda g: A.random_crop_flip(x, 4, g),
              lambda g: A.random_resized_crop_flip(x, 24, gen=g)):
        a, b = f(gen(5)), f(gen(5))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        g = gen(5)
        first, second = f(g), f(g)  # the generator moves on
        assert not torch.equal(first, second) and not torch.equal(a, f(gen(6)))


def test_channels_last_in_channels_last_out():
    x = torch.randn(8, 3, 32, 32)
    cl = x.contiguous(memory_format=torch.channels_last)
    for f in (lambda t: A.random_crop_flip(t, 4, gen(2)),
              lambda t: A.random_resized_crop_flip(t, 20, gen=gen(2)),
              lambda t: A.resize(t, 40),
              lambda t: A.resize_center_crop(t, 36, 30)):
        a, b = f(x), f(cl)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        assert b.is_contiguous(memory_format=torch.channels_last) and a.is_contiguous()


@pytest.mark.parametrize("out_size", [20, 64])  # down- and up-sampling
def test_resized_crops_equal_interpolate_of_each_crop(out_size):
    x = torch.randn(16, 3, 37, 45)
    out = A.random_resized_crop_flip(x, out_size, gen=gen(4))
    top, left, h, w, flips = A.resized_crop_params(16, 37, 45, gen=gen(4))
    for n in range(16):
        t, l, hh, ww = int(top[n]), int(left[n]), int(h[n]), int(w[n])
        assert 0 <= t and t + hh <= 37 and 0 <= l and l + ww <= 45
        crop = x[n:n + 1, :, t:t + hh, l:l + ww]
        want = F.interpolate(crop, size=(out_size, out_size), mode="bilinear",
                             align_corners=False, antialias=True)[0]
        want = want.flip(-1) if flips[n] else want
        # float32 sums of ≤ 2·45/20 taps in another order: ~1e-6 (measured 4e-6 at most)
        torch.testing.assert_close(out[n], want, rtol=1e-5, atol=2e-5)


def torchvision_get_params(rng, height, width, scale, ratio):
    """torchvision.transforms.RandomResizedCrop.get_params, transcribed with Python's random."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.randint(0, height - h)
            j = rng.randint(0, width - w)
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height,width,ratio", [(100, 100, (3 / 4, 4 / 3)),
                                                (60, 140, (3 / 4, 4 / 3)),
                                                (60, 140, (1.0, 2.5))])  # w ≠ h in law
def test_resized_crop_boxes_follow_torchvision_in_distribution(height, width, ratio):
    n, scale = 20_000, (0.08, 1.0)
    top, left, h, w, flips = A.resized_crop_params(n, height, width, scale, ratio, gen(11))
    rng = random.Random(11)
    ref = np.array([torchvision_get_params(rng, height, width, scale, ratio) for _ in range(n)],
                   dtype=np.float64)
    ours = torch.stack([top, left, h, w], 1).double().numpy()
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= width).all()

    def stats(b):  # area fraction, log aspect, centre of the box (y, x)
        return np.stack([b[:, 2] * b[:, 3] / (height * width), np.log(b[:, 3] / b[:, 2]),
                         (b[:, 0] + b[:, 2] / 2) / height, (b[:, 1] + b[:, 3] / 2) / width], 1)

    a, b = stats(ours), stats(ref)
    se = np.sqrt(a.var(0) / n + b.var(0) / n)
    assert (np.abs(a.mean(0) - b.mean(0)) < 5 * se).all(), (a.mean(0), b.mean(0), se)
    assert abs(flips.double().mean() - 0.5) < 5 * 0.5 / math.sqrt(n)


def test_resized_crop_positions_are_uniform():
    # area 25 and aspect 1 fixed: every box is 5×5, its corner uniform on 0..5 × 0..5
    n = 12_000
    top, left, h, w, _ = A.resized_crop_params(n, 10, 10, (0.25, 0.25), (1.0, 1.0), gen(2))
    assert set(h.tolist()) == set(w.tolist()) == {5}
    sd = math.sqrt(n * (1 / 6) * (5 / 6))
    for draws in (top, left):
        counts = torch.bincount(draws, minlength=6)
        assert len(counts) == 6 and ((counts - n / 6).abs() < 5 * sd).all(), counts


def test_resized_crop_fallbacks_are_torchvisions_centre_crops():
    # 10×100 (aspect 10, above 4/3) with the whole area asked for: no candidate fits
    top, left, h, w, _ = A.resized_crop_params(50, 10, 100, (1.0, 1.0), gen=gen(0))
    assert set(h.tolist()) == {10} and set(w.tolist()) == {13}  # round(10 · 4/3)
    assert set(top.tolist()) == {0} and set(left.tolist()) == {43}  # (100 − 13) // 2
    want = torchvision_get_params(random.Random(0), 10, 100, (1.0, 1.0), (3 / 4, 4 / 3))
    assert want == (0, 43, 10, 13)
    # 10×12 (aspect 1.2, inside the range), an area larger than the image: the whole image
    top, left, h, w, _ = A.resized_crop_params(20, 10, 12, (2.0, 2.0), gen=gen(0))
    assert set(zip(top.tolist(), left.tolist(), h.tolist(), w.tolist())) == {(0, 0, 10, 12)}


def test_resize_center_crop_is_torchvisions_test_transform():
    x = torch.randn(2, 3, 256, 300)  # shorter side already 256: no resampling
    out = A.resize_center_crop(x, 256, 224)
    torch.testing.assert_close(out, x[:, :, 16:240, 38:262], rtol=0, atol=0)
    # round half to even, as torchvision's int(round(...)): 7 − 4 → top 2, 5 − 4 → top 0
    y = coded(1, 1, 7, 5)
    torch.testing.assert_close(A.center_crop(y, 4), y[:, :, 2:6, 0:4], rtol=0, atol=0)
    # 64×80 -> shorter side 32: 32×40, by the separable antialiased filter of `resize_weights`
    z = torch.randn(2, 3, 64, 80)
    small = A.resize(z, 32)
    assert small.shape == (2, 3, 32, 40)
    zero = torch.zeros(2, dtype=torch.long)
    ry = A.resize_weights(zero, torch.full((2,), 64), 32, 64)
    rx = A.resize_weights(zero, torch.full((2,), 80), 40, 80)
    torch.testing.assert_close(small, ry[:, None] @ z @ rx.transpose(1, 2)[:, None],
                               rtol=1e-5, atol=1e-5)
    assert A.resize_center_crop(z, 32, 24).shape == (2, 3, 24, 24)


def test_resize_mnist_to_32():
    x = torch.rand(5, 1, 28, 28)
    out = A.resize(x, 32)
    assert out.shape == (5, 1, 32, 32)
    assert A.resize(x, (32, 32)).shape == (5, 1, 32, 32)
    flat = torch.full((2, 1, 28, 28), 0.3)
    torch.testing.assert_close(A.resize(flat, 32), torch.full((2, 1, 32, 32), 0.3))
    # upsampling: each output is a convex combination of its two nearest input pixels
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6


def test_weights_are_a_partition_of_unity_inside_the_crop():
    start, length = torch.tensor([0, 3, 10]), torch.tensor([20, 7, 30])
    wts = A.resize_weights(start, length, 9, 40, torch.float64)
    torch.testing.assert_close(wts.sum(-1), torch.ones(3, 9, dtype=torch.float64))
    k = torch.arange(40)
    outside = (k[None] < start[:, None]) | (k[None] >= (start + length)[:, None])  # (3, 40)
    assert (wts.permute(1, 0, 2)[:, outside] == 0).all() and (wts >= 0).all()


@pytest.mark.parametrize("call", [
    lambda: A.random_crop_flip(torch.randn(3, 32, 32), 4),  # one image, not a batch
    lambda: A.random_crop_flip(torch.randn(2, 3, 8, 8), 2, size=20),  # window > padded image
    lambda: A.random_crop_flip(torch.randn(2, 3, 8, 8), -1),
    lambda: A.random_crop_flip(torch.randn(2, 3, 8, 8), 2, fill=(0.0, 1.0)),  # 2 values, 3 ch
    lambda: A.random_resized_crop_flip(torch.randn(2, 3, 8, 8), 4, scale=(0.9, 0.1)),
    lambda: A.random_resized_crop_flip(torch.randn(2, 3, 8, 8), 0),
    lambda: A.center_crop(torch.randn(2, 3, 8, 8), 9),
    lambda: A.resize(torch.zeros(2, 3, 8, 8, dtype=torch.long), 4),
])
def test_bad_arguments_are_one_line(call):
    with pytest.raises(AsymbpError) as err:
        call()
    assert "\n" not in str(err.value)
