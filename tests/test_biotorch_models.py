"""BioTorch's networks (jsalbert/biotorch, biotorch/models/le_net.py, small_resnet.py) and the
ImageNet ResNet-18: layer lists, parameter counts, and each forward against a transcription of
BioTorch's own forward in plain torch.nn.functional calls on the same weights.

Parameter counts by hand (conv: out·in·k·k + out, fc: out·in + out):

lenet_mnist, 1×32×32: 32 -5-> 28 -pool-> 14 -5-> 10 -pool-> 5 -5-> 1, flat 120
    6·1·25+6 + 16·6·25+16 + 120·16·25+120 + 84·120+84 + 10·84+10
    = 156 + 2416 + 48120 + 10164 + 850 = 61706 (LeNet-5's familiar 61.7 k)
lenet_cifar, 3×32×32: 32 -3-> 30 -pool-> 15 -3-> 13 -pool-> 6 -3-> 4, global mean, flat 128
    32·3·9+32 + 64·32·9+64 + 128·64·9+128 + 256·128+256 + 10·256+10
    = 896 + 18496 + 73856 + 33024 + 2570 = 128842
BN (affine) adds 2 per channel/unit: lenet_mnist 2·(6+16+120+84) = 452, lenet_cifar
    2·(32+64+128+256) = 960.
resnet56 (6n+2, n = 9, option-A shortcuts, BN affine, convs without bias):
    stem 3·16·9 + 32; stage 1: 9 · (2·16·16·9 + 2·32); stage 2: (16·32·9 + 32·32·9 + 2·64) +
    8 · (2·32·32·9 + 2·64); stage 3: (32·64·9 + 64·64·9 + 2·128) + 8 · (2·64·64·9 + 2·128);
    fc 64·10+10
    = 464 + 42048 + (13952 + 148480) + (55552 + 591872) + 650 = 853018 (He et al.: 0.85 M)
resnet18 at 224×224 = torchvision's resnet18: 11689512.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asymbp import convert
from asymbp.errors import AsymbpError
from asymbp.models import MODELS, build, check_fit, fits, weight_layers
from asymbp.optim import SGD

pytestmark = pytest.mark.usefixtures("one_thread")

# key -> (input shape, parameters without BN, BN channels, weight layers as BioTorch lists them:
#         (kind, in, out, kernel))
BIOTORCH = {
    "lenet_mnist": ((1, 32, 32), 61706, 6 + 16 + 120 + 84,
                    [("conv", 1, 6, 5), ("conv", 6, 16, 5), ("conv", 16, 120, 5),
                     ("fc", 120, 84, None), ("fc", 84, 10, None)]),
    "lenet_cifar": ((3, 32, 32), 128842, 32 + 64 + 128 + 256,
                    [("conv", 3, 32, 3), ("conv", 32, 64, 3), ("conv", 64, 128, 3),
                     ("fc", 128, 256, None), ("fc", 256, 10, None)]),
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def layer_list(model):
    out = []
    for _, m in weight_layers(model):
        if isinstance(m, nn.Conv2d):
            assert m.stride == (1, 1) and m.padding == (0, 0)  # BioTorch's: unpadded
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0]))
        else:
            out.append(("fc", m.in_features, m.out_features, None))
    return out


@pytest.mark.parametrize("key", sorted(BIOTORCH))
def test_lenets_layer_lists_and_parameter_counts(key):
    shape, count, bn_channels, layers = BIOTORCH[key]
    assert (MODELS[key].in_channels, MODELS[key].image_size) == (shape[0], shape[1])
    for bn, affine, extra in [(False, False, 0), (True, False, 0), (True, True, 2 * bn_channels)]:
        model = build(key, 10, bn=bn, bn_affine=affine)
        assert n_params(model) == count + extra, (key, bn, affine)
        assert layer_list(model) == layers
        model.eval()
        assert model(torch.randn(3, *shape)).shape == (3, 10)


def biotorch_forward(key, model, x):
    """BioTorch's forward (le_net.py), written out in F calls on the model's weights."""
    (c1, c2, c3, f1, f2) = [m for _, m in weight_layers(model)]
    out = F.max_pool2d(F.relu(F.conv2d(x, c1.weight, c1.bias)), 2)
    out = F.max_pool2d(F.relu(F.conv2d(out, c2.weight, c2.bias)), 2)
    out = F.relu(F.conv2d(out, c3.weight, c3.bias))
    if key == "lenet_cifar":
        out = F.avg_pool2d(out, out.size()[3])
    out = torch.flatten(out, 1)
    return F.linear(F.relu(F.linear(out, f1.weight, f1.bias)), f2.weight, f2.bias)


@pytest.mark.parametrize("key", sorted(BIOTORCH))
def test_lenets_compute_biotorchs_forward(key):
    torch.manual_seed(0)
    model = build(key, 10)
    x = torch.randn(4, *BIOTORCH[key][0])
    torch.testing.assert_close(model(x), biotorch_forward(key, model, x))


def test_lenet_mnist_needs_the_32_pixel_resize():
    assert fits("lenet_mnist", (1, 32, 32)) and not fits("lenet_mnist", (1, 28, 28))
    with pytest.raises(AsymbpError) as err:
        check_fit("lenet_mnist", (1, 28, 28), "mnist")
    msg = str(err.value)
    assert "\n" not in msg and "at least 32×32" in msg


def test_resnet56():
    model = build("resnet56", 10, bn=True, bn_affine=True)
    assert n_params(model) == 853018
    assert len(weight_layers(model)) == 56  # 6n + 2: 55 convs and the classifier
    assert len(model.stages) == 3 and [len(s) for s in model.stages] == [9, 9, 9]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # no BN: the convs get biases instead (2032 of them), the BN parameters (4064) go
    assert n_params(build("resnet56", 10)) == 853018 - 4064 + 2032


def test_resnet18_at_224_is_the_imagenet_resnet18():
    model = build("resnet18", 1000, image_size=224, bn=True, bn_affine=True)
    assert n_params(model) == 11689512  # torchvision.models.resnet18
    stem = [m for m in model.stem if not isinstance(m, (nn.BatchNorm2d, nn.ReLU))]
    conv, pool = stem
    assert (conv.kernel_size, conv.stride, conv.padding) == ((7, 7), (2, 2), (3, 3))
    assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride) == (3, 2)
    with torch.device("meta"):  # shapes only: 224×224 -> 7×7 before the global pool
        big = build("resnet18", 1000, image_size=224, bn=True, bn_affine=True)
        feats = big.stages(big.stem(torch.zeros(2, 3, 224, 224)))
        assert feats.shape == (2, 512, 7, 7) and big(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


# Unscaled uSF (V = sign(W), |V| = 1 against He-initialised |W| ≈ 0.1) multiplies the error by
# about 1/std(W) ≈ 8 per layer: through 55 convs that overflows float32 (measured: inf already
# for ResNet-20, NaN for ResNet-56), so the ResNet step is taken with the scaled sign scheme
# (sSF, V = std(W₀)·sign(W), BioTorch's uSF under Xavier initialisation).
@pytest.mark.parametrize("key,bn,scheme", [("lenet_mnist", False, "uSF"),
                                           ("lenet_cifar", False, "uSF"),
                                           ("lenet_cifar", True, "uSF"),
                                           ("resnet56", True, "sSF")])
def test_converts_to_a_sign_scheme_and_trains_one_step(key, bn, scheme):
    torch.manual_seed(0)
    model = build(key, 10, bn=bn, bn_affine=bn)
    convert(model, scheme, seed=0)
    shape = (MODELS[key].in_channels, MODELS[key].image_size, MODELS[key].image_size)
    x, y = torch.randn(8, *shape), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    opt = SGD(model.parameters(), lr=1e-3)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    # every layer's feedback is c·sign(W), c > 0
    for _, layer in weight_layers(model):
        torch.testing.assert_close(torch.sign(layer.feedback_weight()), torch.sign(layer.weight))
