"""The networks (DESIGN §5): Table 1 of Liao, Leibo & Poggio 2016, plus ResNets, in a registry.

`build(key, num_classes, ...)` returns a plain PyTorch model (nn.Linear / nn.Conv2d layers, ReLU
everywhere); `asymbp.convert` then makes it asymmetric. With `bn=True` a batch-norm layer follows
every convolution and every hidden fully connected layer, before the ReLU, none after the
classifier; `bn_affine` switches its learnable scale and shift on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import AsymbpError, unknown
from .registry import Registry


@dataclass(frozen=True)
class ModelInfo:
    key: str
    builder: Callable[..., nn.Module]
    in_channels: int | None  # default input channels (None: a vector input)
    image_size: int | None  # default input size (H = W)
    description: str


MODELS: Registry[ModelInfo] = Registry("model")


def register(key: str, in_channels: int | None, image_size: int | None, description: str):
    """Decorator: register a network builder `fn(num_classes, in_channels, image_size, norm)`."""

    def deco(fn):
        MODELS.register(key, ModelInfo(key, fn, in_channels, image_size, description))
        return fn

    return deco


def build(key: str, num_classes: int, in_channels: int | None = None,
          image_size: int | None = None, bn: bool = False, bn_affine: bool = False) -> nn.Module:
    """Build the network `key` (a plain PyTorch model; convert it to a scheme afterwards).

    Arguments:
        key: one of `MODELS` (mnist, cifar, svhn, large, mlp, resnet20, resnet18; any case).
        num_classes: classifier outputs.
        in_channels: input channels (images) or input features (`mlp`); default: the table's.
        image_size: input height = width; default: the table's.
        bn, bn_affine: batch normalisation before every ReLU, with or without scale and shift.
    """
    info = MODELS[key]
    key = info.key
    if int(num_classes) < 2:
        raise AsymbpError(f"num_classes must be >= 2, got {num_classes}")
    in_channels = in_channels or info.in_channels
    if in_channels is None:
        raise AsymbpError(f"model {key!r} needs in_channels (the input vector's length)")
    image_size = image_size or info.image_size
    norm = _Norm(bn, bn_affine)
    model = info.builder(num_classes=int(num_classes), in_channels=int(in_channels),
                         image_size=image_size, norm=norm)
    model.model_key = key
    return model


# ---- does a network take a dataset's inputs? --------------------------------------------------


def _shape_text(shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return f"{shape[0]}-dim vectors"
    return "×".join(str(n) for n in shape) + (" images" if len(shape) == 3 else " inputs")


def _try(key: str, shape: tuple[int, ...]) -> str | None:
    """Build network `key` for inputs of `shape` ((C, H, W) or (D,)) and run one example through
    it on the meta device (shapes only: no memory, no arithmetic); torch's complaint, or None."""
    try:
        with torch.device("meta"), torch.no_grad():
            size = {"image_size": shape[1]} if len(shape) == 3 else {}
            model = build(key, 2, in_channels=shape[0], **size)
            model(torch.zeros(1, *shape))
    except (RuntimeError, ValueError) as err:
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None


def fits(key: str, input_shape: tuple[int, ...]) -> bool:
    """Whether network `key` takes inputs of `input_shape` ((C, H, W) images or (D,) vectors)."""
    shape = tuple(int(n) for n in input_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        return False
    if len(shape) == 1 and MODELS[key].in_channels is not None:
        return False  # a convolutional network on vectors
    return _try(key, shape) is None


def _min_image_size(key: str, channels: int) -> int | None:
    """The smallest H = W that network `key` takes (None if none up to 1024)."""
    lo, hi = 1, 1024
    if not fits(key, (channels, hi, hi)):
        return None
    while lo < hi:  # a bigger image fits whenever a smaller one does
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(key, (channels, mid, mid)) else (mid + 1, hi)
    return lo


def check_fit(key: str, input_shape: tuple[int, ...], dataset: str = "the dataset") -> None:
    """Raise a one-line error unless network `key` takes `dataset`'s inputs of `input_shape`
    ((C, H, W) or (D,)), naming the networks that do: before a run builds anything."""
    info = MODELS[key]
    key = info.key
    shape = tuple(int(n) for n in input_shape)
    if fits(key, shape):
        return
    valid = [k for k in MODELS if k != key and fits(k, shape)]
    has = _shape_text(shape)
    table = (f"{info.in_channels}×{info.image_size}×{info.image_size} images"
             if info.in_channels and info.image_size else "images")
    if len(shape) == 1 and info.in_channels is not None:
        what = f"needs {table} (C×H×W), dataset {dataset} has {has}"
    elif len(shape) == 3 and (least := _min_image_size(key, shape[0])) is not None \
            and min(shape[1:]) < least:
        what = (f"needs images of at least {least}×{least} pixels (its own input: {table}), "
                f"dataset {dataset} has {has}")
    else:
        why = _try(key, shape) if len(shape) in (1, 3) else "expected (C, H, W) or (D,)"
        what = f"cannot take dataset {dataset}'s {has} ({why})"
    fix = (f"valid models for it: {', '.join(valid)}; give --model {valid[0]}" if valid
           else "no registered model takes them")
    raise AsymbpError(f"model {key!r} {what}; {fix}")


class _Norm:
    """Makes the BN layers (or nothing) that follow convs and hidden fc layers."""

    def __init__(self, bn: bool, affine: bool):
        self.bn, self.affine = bn, affine

    def conv(self, c: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(c, affine=self.affine)] if self.bn else []

    def fc(self, n: int) -> list[nn.Module]:
        return [nn.BatchNorm1d(n, affine=self.affine)] if self.bn else []


class PadRB(nn.Module):
    """Pad one pixel on the right and bottom (MatConvNet's pad [0 1 0 1] of the CIFAR pools).

    Zero padding equals −∞ padding for max pooling here because pooling follows a ReLU.
    """

    def forward(self, x):
        return F.pad(x, (0, 1, 0, 1))


class TableNet(nn.Module):
    """`features` (convs and pools), flatten, `classifier` (fc layers)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _flat_size(features: nn.Module, in_channels: int, image_size: int) -> int:
    with torch.no_grad():
        return features(torch.zeros(2, in_channels, image_size, image_size)).flatten(1).shape[1]


def _conv(cin, cout, k, norm, stride=1, padding=0):
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=padding), *norm.conv(cout), nn.ReLU()]


def _fc_stack(sizes: list[int], norm) -> nn.Sequential:
    """fc layers sizes[0] -> ... -> sizes[-1]; BN + ReLU after every one but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [*norm.fc(b), nn.ReLU()]
    return nn.Sequential(*layers)


def _table_net(features: list[nn.Module], hidden: list[int], num_classes, in_channels,
               image_size, norm) -> TableNet:
    feats = nn.Sequential(*features)
    flat = _flat_size(feats, in_channels, image_size)
    return TableNet(feats, _fc_stack([flat, *hidden, num_classes], norm))


@register("mnist", 1, 28, "conv 5x5x20, maxpool 2/2, conv 5x5x50, maxpool 2/2, fc 500, fc C")
def mnist_net(num_classes, in_channels, image_size, norm):
    return _table_net([
        *_conv(in_channels, 20, 5, norm), nn.MaxPool2d(2, 2),
        *_conv(20, 50, 5, norm), nn.MaxPool2d(2, 2),
    ], [500], num_classes, in_channels, image_size, norm)


@register("cifar", 3, 32, "conv 5x5x32, maxpool 3/2, conv 5x5x64, avgpool 3/2, conv 5x5x64, "
          "avgpool 3/2, fc 128, fc C (convs pad 2, pools pad right/bottom 1)")
def cifar_net(num_classes, in_channels, image_size, norm):
    return _table_net([
        *_conv(in_channels, 32, 5, norm, padding=2), PadRB(), nn.MaxPool2d(3, 2),
        *_conv(32, 64, 5, norm, padding=2), PadRB(), nn.AvgPool2d(3, 2),
        *_conv(64, 64, 5, norm, padding=2), PadRB(), nn.AvgPool2d(3, 2),
    ], [128], num_classes, in_channels, image_size, norm)


@register("svhn", 3, 32, "conv 5x5x20, maxpool 2/2, conv 7x7x512, maxpool 2/2, fc 40, fc C")
def svhn_net(num_classes, in_channels, image_size, norm):
    return _table_net([
        *_conv(in_channels, 20, 5, norm), nn.MaxPool2d(2, 2),
        *_conv(20, 512, 7, norm), nn.MaxPool2d(2, 2),
    ], [40], num_classes, in_channels, image_size, norm)


@register("large", 3, 119, "conv 9x9x48 /2, maxpool 2/2, conv 5x5x128, maxpool 2/2, "
          "fc max(256,3C), fc 2C, fc C")
def large_net(num_classes, in_channels, image_size, norm):
    return _table_net([
        *_conv(in_channels, 48, 9, norm, stride=2), nn.MaxPool2d(2, 2),
        *_conv(48, 128, 5, norm), nn.MaxPool2d(2, 2),
    ], [max(256, 3 * num_classes), 2 * num_classes], num_classes, in_channels, image_size, norm)


class MLP(nn.Module):
    def __init__(self, classifier: nn.Sequential):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.flatten(x, 1))


@register("mlp", None, None, "fc 512, fc 256, fc C (the TIMIT-80 network); input: a vector")
def mlp_net(num_classes, in_channels, image_size, norm):
    # For a vector input `in_channels` is its length; an image input is flattened.
    n_in = in_channels * (image_size or 1) ** 2 if image_size else in_channels
    return MLP(_fc_stack([n_in, 512, 256, num_classes], norm))


# ---- ResNets (for the 2018/2024 methods) ----------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not norm.bn)
        self.bn1 = _one(norm.conv(cout))
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not norm.bn)
        self.bn2 = _one(norm.conv(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":  # He et al. 2016 CIFAR option A: subsample, pad channels with 0
                self.shortcut = _SubsamplePad(stride, cout - cin)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not norm.bn),
                                              *norm.conv(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _SubsamplePad(nn.Module):
    def __init__(self, stride, extra):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


def _one(mods):
    return mods[0] if mods else nn.Identity()


class ResNet(nn.Module):
    def __init__(self, widths, blocks, num_classes, in_channels, norm, shortcut, stem):
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=not norm.bn),
                                      *norm.conv(widths[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not norm.bn),
                                      *norm.conv(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(BasicBlock(cin, w, stride, norm, shortcut))
                cin = w
            layers.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("resnet20", 3, 32, "CIFAR ResNet-20 (He et al. 2016): 3 stages of 3 blocks, 16/32/64")
def resnet20(num_classes, in_channels, image_size, norm):
    return ResNet([16, 32, 64], [3, 3, 3], num_classes, in_channels, norm, "A", "cifar")


@register("resnet18", 3, 32, "ResNet-18: 4 stages of 2 blocks, 64-512; 3x3 stem below 64 px")
def resnet18(num_classes, in_channels, image_size, norm):
    stem = "imagenet" if (image_size or 32) >= 64 else "cifar"
    return ResNet([64, 128, 256, 512], [2, 2, 2, 2], num_classes, in_channels, norm, "B", stem)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every Linear/Conv2d (asymmetric or not), in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def freeze(model: nn.Module, where: str) -> None:
    """Experiment C2: `bottom` = the last layer random and frozen; `top` = every other layer.

    Frozen layers keep their random initial weights (`requires_grad = False`); errors still flow
    through them to the layers below.
    """
    if where == "none":
        return
    layers = weight_layers(model)
    if where == "bottom":
        frozen = layers[-1:]
    elif where == "top":
        frozen = layers[:-1]
    else:
        raise unknown("freeze setting", where, ["none", "bottom", "top"])
    for _, layer in frozen:
        for p in (layer.weight, layer.bias):
            if p is not None:
                p.requires_grad_(False)


# ---- BioTorch's networks (Sanfiz & Akrout 2021; DESIGN §9a) ----------------------------------
# Their layer lists (jsalbert/biotorch, biotorch/models/le_net.py and small_resnet.py): convs
# unpadded, stride 1, with biases; ReLU after every conv and the hidden fc layer. BN, when asked
# for, goes where it goes in every other network here (after each conv / hidden fc, before the
# ReLU); BioTorch's LeNets have none.


@register("lenet_mnist", 1, 32, "BioTorch's LeNetMNIST: conv 5x5x6, maxpool 2, conv 5x5x16, "
          "maxpool 2, conv 5x5x120, fc 84, fc C (inputs resized to 32x32)")
def lenet_mnist(num_classes, in_channels, image_size, norm):
    # 32 -> 28 -> 14 -> 10 -> 5 -> 1: the last conv sees the whole map, flat 120
    return _table_net([
        *_conv(in_channels, 6, 5, norm), nn.MaxPool2d(2),
        *_conv(6, 16, 5, norm), nn.MaxPool2d(2),
        *_conv(16, 120, 5, norm),
    ], [84], num_classes, in_channels, image_size, norm)


@register("lenet_cifar", 3, 32, "BioTorch's LeNetCIFAR: conv 3x3x32, maxpool 2, conv 3x3x64, "
          "maxpool 2, conv 3x3x128, global average pool, fc 256, fc C (convs unpadded)")
def lenet_cifar(num_classes, in_channels, image_size, norm):
    # 32 -> 30 -> 15 -> 13 -> 6 -> 4, averaged over the 4x4 map (BioTorch: avg_pool2d with the
    # map's width as kernel, the same for square maps): flat 128
    return _table_net([
        *_conv(in_channels, 32, 3, norm), nn.MaxPool2d(2),
        *_conv(32, 64, 3, norm), nn.MaxPool2d(2),
        *_conv(64, 128, 3, norm), nn.AdaptiveAvgPool2d(1),
    ], [256], num_classes, in_channels, image_size, norm)


@register("resnet56", 3, 32, "CIFAR ResNet-56 (He et al. 2016): 3 stages of 9 blocks, 16/32/64")
def resnet56(num_classes, in_channels, image_size, norm):
    return ResNet([16, 32, 64], [9, 9, 9], num_classes, in_channels, norm, "A", "cifar")


# ---- Li & Benna 2024 (Product Feedback Alignment) -------------------------------------------


@register("mlp512", 1, 28, "Li & Benna's MNIST network: fc 512, fc 512, fc C on the flattened "
          "image (784-512-512-10, ReLU)")
def mlp512(num_classes, in_channels, image_size, norm):
    # An image network that flattens its input (C·H·W features, 784 for MNIST), not a vector one
    # like `mlp`: it takes any image dataset, and builds without in_channels.
    return MLP(_fc_stack([in_channels * image_size**2, 512, 512, num_classes], norm))
