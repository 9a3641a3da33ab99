"""The networks of DESIGN §5 (Table 1 of Liao et al. 2016): shapes and parameter counts.

Parameter counts derived by hand (conv: out·in·k·k + out, fc: out·in + out; no BN):

mnist, 28×28×1: conv 5×5×20 (28→24, pool →12), conv 5×5×50 (12→8, pool →4): flat 50·4·4 = 800
    20·1·25+20 + 50·20·25+50 + 800·500+500 + 500·10+10
    = 520 + 25050 + 400500 + 5010 = 431080
cifar, 32×32×3: every conv pads 2 (size kept), every pool pads 1 right/bottom then 3/2:
    32 →(pad 33) 16 →(pad 17) 8 →(pad 9) 4, flat 64·4·4 = 1024
    32·3·25+32 + 64·32·25+64 + 64·64·25+64 + 1024·128+128 + 128·C+C
    = 2432 + 51264 + 102464 + 131200 + 1290 = 288650 (C = 10); 300260 (C = 100: 12900)
svhn, 32×32×3: conv 5×5×20 (32→28, pool →14), conv 7×7×512 (14→8, pool →4): flat 512·16 = 8192
    20·3·25+20 + 512·20·49+512 + 8192·40+40 + 40·10+10
    = 1520 + 502272 + 327720 + 410 = 831922
large, 119×119×3: conv 9×9×48 /2 (119→56, pool →28), conv 5×5×128 (28→24, pool →12):
    flat 128·12·12 = 18432; fc max(256, 3C), fc 2C, fc C
    C = 102: 48·3·81+48 + 128·48·25+128 + 18432·306+306 + 306·204+204 + 204·102+102
           = 11712 + 153728 + 5640498 + 62628 + 20910 = 5889476
    C = 17:  11712 + 153728 + 18432·256+256 + 256·34+34 + 34·17+17
           = 11712 + 153728 + 4718848 + 8738 + 595 = 4893621
mlp, 1845 → 512 → 256 → 80 (TIMIT-80):
    1845·512+512 + 512·256+256 + 256·80+80 = 945152 + 131328 + 20560 = 1097040
mlp512, 28×28×1 flattened → 512 → 512 → 10 (Li & Benna 2024):
    784·512+512 + 512·512+512 + 512·10+10 = 401920 + 262656 + 5130 = 669706
BN adds 2 parameters per channel/unit when affine, none otherwise (running stats are buffers):
    mnist: 2·(20 + 50 + 500) = 1140.
"""

import pytest
import torch
from torch import nn

from asymbp import convert
from asymbp.errors import AsymbpError
from asymbp.models import MODELS, build, check_fit, freeze, weight_layers


pytestmark = pytest.mark.usefixtures("one_thread")

# key -> (build kwargs, input shape, output classes, parameters without BN, BN channels)
TABLE1 = {
    "mnist": (dict(num_classes=10), (1, 28, 28), 10, 431080, 20 + 50 + 500),
    "cifar": (dict(num_classes=10), (3, 32, 32), 10, 288650, 32 + 64 + 64 + 128),
    "cifar100": (dict(num_classes=100), (3, 32, 32), 100, 300260, 32 + 64 + 64 + 128),
    "svhn": (dict(num_classes=10), (3, 32, 32), 10, 831922, 20 + 512 + 40),
    "large": (dict(num_classes=102), (3, 119, 119), 102, 5889476, 48 + 128 + 306 + 204),
    "large17": (dict(num_classes=17), (3, 119, 119), 17, 4893621, 48 + 128 + 256 + 34),
    "mlp": (dict(num_classes=80, in_channels=1845), (1845,), 80, 1097040, 512 + 256),
    "mlp512": (dict(num_classes=10), (1, 28, 28), 10, 669706, 512 + 512),
}


def _key(name):
    return {"cifar100": "cifar", "large17": "large"}.get(name, name)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_table1_shapes_and_parameter_counts(name):
    kwargs, shape, classes, count, bn_channels = TABLE1[name]
    torch.manual_seed(0)
    for bn, affine, extra in [(False, False, 0), (True, False, 0), (True, True, 2 * bn_channels)]:
        model = build(_key(name), bn=bn, bn_affine=affine, **kwargs)
        assert n_params(model) == count + extra, (name, bn, affine)
        model.eval()
        out = model(torch.randn(2, *shape))
        assert out.shape == (2, classes)


def test_mlp512_is_li_and_benna_784_512_512_10():
    model = build("mlp512", 10)
    fcs = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert [(m.in_features, m.out_features) for m in fcs] == [(784, 512), (512, 512), (512, 10)]
    assert all(isinstance(m, nn.Linear) and m.bias is not None for m in fcs)  # no conv
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2
    assert check_fit("mlp512", (1, 28, 28)) is None
    assert build("mlp512", 10, in_channels=3, image_size=32).classifier[0].in_features == 3072
    with pytest.raises(AsymbpError):
        check_fit("mlp512", (784,))  # an image network: vectors go to `mlp`


def test_cifar_pool_padding_sizes():
    # 32 -> 16 -> 8 -> 4 with the right/bottom pool padding
    model = build("cifar", 10)
    x = torch.zeros(1, 3, 32, 32)
    sizes = []
    for m in model.features:
        x = m(x)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            sizes.append(x.shape[-1])
    assert sizes == [16, 8, 4]


def test_large_first_conv_stride():
    conv = build("large", 102).features[0]
    assert conv.stride == (2, 2) and conv.kernel_size == (9, 9) and conv.out_channels == 48


def test_mlp_flattens_images():
    model = build("mlp", 10, in_channels=1, image_size=28)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.classifier[0].in_features == 784


def test_mnist_net_on_other_image_sizes():
    # the flattened size follows the input (e.g. an npz of 3×32×32 images on the mnist net)
    model = build("mnist", 10, in_channels=3, image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _sequence(model):
    return [m for m in model.modules() if not list(m.children())]


@pytest.mark.parametrize("key", ["mnist", "cifar", "svhn", "large", "mlp", "mlp512"])
@pytest.mark.parametrize("affine", [False, True])
def test_bn_before_every_relu_and_not_after_classifier(key, affine):
    kwargs = dict(in_channels=20) if key == "mlp" else {}
    model = build(key, 10, bn=True, bn_affine=affine, **kwargs)
    seq = _sequence(model)
    bns = [m for m in seq if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    relus = [i for i, m in enumerate(seq) if isinstance(m, nn.ReLU)]
    weights = [i for i, m in enumerate(seq) if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(bns) == len(relus) == len(weights) - 1
    for i in relus:  # weight layer, BN, ReLU
        assert isinstance(seq[i - 1], nn.modules.batchnorm._BatchNorm)
        assert isinstance(seq[i - 2], (nn.Linear, nn.Conv2d))
        assert seq[i - 1].num_features == (seq[i - 2].out_features if isinstance(seq[i - 2], nn.Linear)
                                           else seq[i - 2].out_channels)
    assert isinstance(seq[-1], nn.Linear)  # the classifier, nothing after it
    for b in bns:
        assert b.affine == affine
        assert (b.weight is not None) == affine


@pytest.mark.parametrize("key", ["mnist", "cifar", "svhn", "large", "mlp", "mlp512"])
def test_no_bn_by_default(key):
    kwargs = dict(in_channels=20) if key == "mlp" else {}
    model = build(key, 10, **kwargs)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_resnets():
    torch.manual_seed(0)
    r20 = build("resnet20", 10, bn=True, bn_affine=True)
    # He et al. 2016, 0.27 M, option-A (parameter-free) shortcuts:
    # convs (no bias): 3·16·9 + 6·16·16·9 + (16·32·9 + 5·32·32·9) + (32·64·9 + 5·64·64·9)
    # = 267 696; BN 2·(16 + 6·16 + 6·32 + 6·64) = 1 376; fc 64·10+10 = 650 -> 269 722
    # (272 474, the other figure often quoted, is with 1×1 projection shortcuts, option B)
    assert n_params(r20) == 269722
    assert r20(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert 0.26e6 < n_params(build("resnet20", 10)) < 0.28e6
    r18 = build("resnet18", 10, bn=True, bn_affine=True)
    assert n_params(r18) == 11173962  # the common CIFAR ResNet-18, ≈ 11.2 M
    assert r18(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    big = build("resnet18", 1000, bn=True, bn_affine=True, image_size=224)
    assert n_params(big) == 11689512  # torchvision's resnet18
    assert big(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_every_model_converts_and_trains_one_step(key):
    kwargs = dict(in_channels=12) if key == "mlp" else {}
    model = build(key, 5, bn=True, **kwargs)
    convert(model, "uSF", seed=0)
    info = MODELS[key]
    shape = (12,) if key == "mlp" else (info.in_channels, 32 if key.startswith("resnet") else
                                         info.image_size, 32 if key.startswith("resnet") else
                                         info.image_size)
    out = model(torch.randn(4, *shape))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_freeze_bottom_and_top():
    model = build("mnist", 10)
    layers = weight_layers(model)
    assert [n for n, _ in layers] == ["features.0", "features.3", "classifier.0", "classifier.2"]
    freeze(model, "bottom")  # the last layer random and frozen
    frozen = [n for n, m in layers if not m.weight.requires_grad]
    assert frozen == ["classifier.2"]
    assert not layers[-1][1].bias.requires_grad
    model = build("mnist", 10, bn=True, bn_affine=True)
    freeze(model, "top")  # every layer but the last
    layers = weight_layers(model)
    assert [n for n, m in layers if not m.weight.requires_grad] == [n for n, _ in layers[:-1]]
    assert all(not m.bias.requires_grad for _, m in layers[:-1])
    # BN's scale and shift are not weight layers: they still learn
    assert all(b.weight.requires_grad for b in model.modules() if isinstance(b, nn.BatchNorm2d))
    freeze(model, "none")
    with pytest.raises(AsymbpError):
        freeze(model, "middle")


def test_model_keys_match_case_insensitively():
    assert MODELS["MNIST"] is MODELS["mnist"]
    model = build("MNIST", 10)
    assert model.model_key == "mnist"  # the registered spelling
    check_fit("Mlp", (30,))
    with pytest.raises(AsymbpError, match="valid models for it: mlp"):
        check_fit("MNIST", (30,))


def test_model_option_is_case_insensitive(tmp_path, capsys):
    import numpy as np

    from asymbp.cli import main

    x, y = np.random.default_rng(0).normal(size=(30, 12)).astype(np.float32), np.arange(30) % 3
    path = tmp_path / "vectors.npz"
    np.savez(path, x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:])
    argv = ["run", "--dataset", f"npz:{path}", "--model", "MLP", "--epochs", "1", "--json"]
    assert main(argv) == 0, capsys.readouterr().err


def test_build_errors():
    with pytest.raises(AsymbpError, match="mnist"):
        build("vgg", 10)
    with pytest.raises(AsymbpError):
        build("mnist", 1)
    with pytest.raises(AsymbpError, match="in_channels"):
        build("mlp", 10)
