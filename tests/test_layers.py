"""Every feedback scheme against an oracle (STYLE.md §3).

For each scheme of the registry and each layer configuration, the input gradient of the
asymmetric layer must equal Vᵀg computed independently (autograd through F.linear / F.conv2d with
V as the weight), and the weight and bias gradients must equal plain autograd's.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import asymbp
from asymbp import AsymConv2d, AsymLinear, feedback
from asymbp.errors import AsymbpError

# Every registered scheme, plus flip probabilities for the schemes that take one; OSCHEMES:
# those whose input gradient is Vᵀ g (not DFA's projected output error).
SCHEMES = feedback.variants()
OSCHEMES = [s for s in SCHEMES if not feedback.resolve(s)[0].direct]
# ... and each built with its non-default options too (BioTorch's scales, sparse feedback).
OVARIANTS = [pytest.param(s, {}, id=s) for s in OSCHEMES] + [
    pytest.param(s, o, id=f"{s}[{','.join(f'{k}={v}' for k, v in o.items())}]")
    for s, o in feedback.option_variants() if not feedback.resolve(s)[0].direct]

# One thread: the numbers do not depend on the count that the machine or an earlier test left
# (and tiny tensors are faster on one).
pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = {
    "linear": dict(kind="linear", in_=12, out=8, bias=True),
    "conv-s2-p2-g2-nobias": dict(kind="conv", in_=4, out=6, k=3, stride=2, padding=2, groups=2,
                                 bias=False),
    "conv-dil2-bias": dict(kind="conv", in_=3, out=5, k=3, stride=1, padding=1, dilation=2,
                           groups=1, bias=True),
}


def make_layer(cfg: dict, scheme: str, seed: int = 3, dtype=torch.float64, **options):
    torch.manual_seed(0)
    if cfg["kind"] == "linear":
        layer = AsymLinear(cfg["in_"], cfg["out"], bias=cfg["bias"], scheme=scheme, seed=seed,
                           dtype=dtype, **options)
        x = torch.randn(5, cfg["in_"], dtype=dtype)
    else:
        layer = AsymConv2d(cfg["in_"], cfg["out"], cfg["k"], stride=cfg["stride"],
                           padding=cfg["padding"], dilation=cfg.get("dilation", 1),
                           groups=cfg["groups"], bias=cfg["bias"], scheme=scheme, seed=seed,
                           dtype=dtype, **options)
        x = torch.randn(2, cfg["in_"], 9, 9, dtype=dtype)
    return layer, x


def reference(cfg, layer, x, weight):
    """The plain forward with `weight` in place of W (autograd gives the oracle gradients)."""
    b = layer.bias.detach() if layer.bias is not None else None
    if cfg["kind"] == "linear":
        return F.linear(x, weight, b)
    return F.conv2d(x, weight, b, layer.stride, layer.padding, layer.dilation,
                    layer.groups)


@pytest.mark.parametrize("cfg_name", list(LAYERS))
@pytest.mark.parametrize("scheme,options", OVARIANTS)
def test_input_gradient_is_V_transpose_g(scheme, options, cfg_name):
    cfg = LAYERS[cfg_name]
    layer, x = make_layer(cfg, scheme, **options)
    x.requires_grad_(True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    V = layer.feedback_weight()  # the V this step's backward used
    assert V.shape == layer.weight.shape

    # Oracle 1: dE/dx = Vᵀ g, by autograd through the plain op with V as the weight. In float64
    # every gradient here is a sum of at most 162 products (conv dE/dW: batch × positions, 2·81)
    # of O(1) values, maybe in another order: ≤ 162·eps₆₄ ≈ 4e-14, inside rtol 1e-10 and
    # atol 1e-12 (measured: 4e-15).
    x2 = x.detach().clone().requires_grad_(True)
    reference(cfg, layer, x2, V.detach()).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)

    # Oracle 2: dE/dW and dE/db exactly as plain autograd.
    W2 = layer.weight.detach().clone().requires_grad_(True)
    b2 = layer.bias.detach().clone().requires_grad_(True) if layer.bias is not None else None
    out = (F.linear(x.detach(), W2, b2) if cfg["kind"] == "linear" else
           F.conv2d(x.detach(), W2, b2, layer.stride, layer.padding, layer.dilation, layer.groups))
    out.backward(g)
    torch.testing.assert_close(layer.weight.grad, W2.grad, rtol=1e-10, atol=1e-12)
    if b2 is not None:
        torch.testing.assert_close(layer.bias.grad, b2.grad, rtol=1e-10, atol=1e-12)
    # The forward is the ordinary one.
    torch.testing.assert_close(y, reference(cfg, layer, x.detach(), layer.weight.detach()))


@pytest.mark.parametrize("cfg_name", ["linear", "conv-s2-p2-g2-nobias"])
def test_learned_feedback_gets_the_rule_of_design(cfg_name):
    """KP: grad V = grad W (ΔV = ΔW). PFA: grad R = Bᵀ grad W (ΔR = Bᵀ ΔW)."""
    cfg = LAYERS[cfg_name]
    for scheme in ("KP", "PFA", "PFA-o"):
        layer, x = make_layer(cfg, scheme)
        layer(x.requires_grad_(True)).backward(torch.randn_like(layer(x)))
        gW = layer.weight.grad
        f = layer.feedback
        if scheme == "KP":
            torch.testing.assert_close(f.weight.grad, gW)
        else:
            expected = (f.B.T @ gW.flatten(1)).view_as(f.R)  # (αN, N) @ (N, C·k·k)
            torch.testing.assert_close(f.R.grad, expected)


class RecordOps(TorchDispatchMode):
    """Records every aten op (and its arguments) that runs while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cfg_name", ["linear", "conv-s2-p2-g2-nobias"])
def test_no_input_gradient_when_input_needs_none(cfg_name):
    layer, x = make_layer(LAYERS[cfg_name], "uSF")  # x does not require grad (a first layer)
    y = layer(x)
    with RecordOps() as rec:
        y.sum().backward()
    assert layer.weight.grad is not None
    if cfg_name == "linear":
        mms = [c for c, _ in rec.calls if c is torch.ops.aten.mm.default]
        assert len(mms) == 1  # dE/dW only
    else:
        masks = [a[-1] for c, a in rec.calls if c is torch.ops.aten.convolution_backward.default]
        assert masks == [[False, True, False]]  # output_mask: no dE/dx


def plain_mnist_net():
    torch.manual_seed(0)
    return asymbp.models.build("mnist", 10)


@pytest.mark.parametrize("bn", [False, True])
def test_bp_through_asym_layers_equals_plain_autograd_whole_network(bn):
    torch.manual_seed(0)
    plain = asymbp.models.build("cifar", 10, bn=bn, bn_affine=bn)
    asym = asymbp.convert(copy.deepcopy(plain), "BP", seed=1)
    assert len(asymbp.asym_layers(asym)) == 5
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 3, 5, 9])
    for model in (plain, asym):
        F.cross_entropy(model(x), y, reduction="sum").backward()
    for (n1, p1), (n2, p2) in zip(plain.named_parameters(), asym.named_parameters()):
        assert n1 == n2
        # The same aten kernels on both sides (equal to the bit here, with the AVX2 and the
        # default kernels); the float32 tolerance allows a kernel that sums the batch ×
        # positions (≤ 4·32·32 terms) in another order: ~√4096·eps ≈ 8e-6 relative.
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-6)


def test_bp_layer_equals_nn_linear_and_conv():
    torch.manual_seed(0)
    lin = nn.Linear(7, 3)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, groups=2, bias=False)
    for plain in (lin, conv):
        asym = asymbp.convert(copy.deepcopy(plain), "BP")
        x = torch.randn(2, 7) if plain is lin else torch.randn(2, 4, 8, 8)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        plain(xa).square().sum().backward()
        asym(xb).square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(plain.weight.grad, asym.weight.grad)


def test_drop_in_parameters_and_init_match_nn():
    torch.manual_seed(5)
    a = nn.Conv2d(3, 8, 5, padding=2)
    torch.manual_seed(5)
    b = AsymConv2d(3, 8, 5, padding=2, scheme="uSF", seed=0)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    torch.testing.assert_close(a.weight, b.weight)
    assert isinstance(b, nn.Conv2d)


@pytest.mark.parametrize("padding,mode", [("same", "zeros"), ("valid", "zeros"), (1, "reflect"),
                                          (1, "circular")])
def test_conv_padding_forms(padding, mode):
    torch.manual_seed(0)
    plain = nn.Conv2d(2, 3, (3, 4) if padding == "same" else 3, padding=padding, padding_mode=mode)
    asym = asymbp.convert(copy.deepcopy(plain), "BP")
    x1 = torch.randn(2, 2, 7, 7, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    torch.testing.assert_close(plain(x1), asym(x2))
    plain(x1).sum().backward()
    asym(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


# ---- convert ------------------------------------------------------------------------------


def test_convert_keeps_weights_and_excludes():
    torch.manual_seed(0)
    model = asymbp.models.build("mnist", 10)
    w = model.classifier[0].weight
    asymbp.convert(model, "uSF", exclude=["classifier.2"])
    assert model.classifier[0].weight is w  # the same Parameter: optimizers stay valid
    assert isinstance(model.classifier[0], AsymLinear)
    assert type(model.classifier[2]) is nn.Linear
    assert [l.scheme for _, l in asymbp.asym_layers(model)] == ["uSF"] * 3


def test_convert_is_deterministic_per_seed_and_distinct_per_layer():
    def feedback_of(seed):
        torch.manual_seed(0)
        m = asymbp.convert(asymbp.models.build("mnist", 10), "frSF-50", seed=seed)
        return [l.feedback_weight() for _, l in asymbp.asym_layers(m)]

    a, b, c = feedback_of(1), feedback_of(1), feedback_of(2)
    for va, vb, vc in zip(a, b, c):
        assert torch.equal(va, vb)
        assert not torch.equal(va, vc)


def test_convert_reconverts_asym_layers():
    layer = AsymLinear(4, 3, scheme="uSF", seed=1)
    out = asymbp.convert(layer, "RndF")
    assert out is layer and layer.scheme == "RndF"


# ---- bad input ----------------------------------------------------------------------------


def test_unknown_scheme_is_one_line_listing_valid():
    with pytest.raises(AsymbpError) as e:
        AsymLinear(3, 2, scheme="nope")
    msg = str(e.value)
    assert "\n" not in msg and "nope" in msg and "uSF" in msg and "brSF-p" in msg


@pytest.mark.parametrize("name", ["brSF-101", "frSF-250"])
def test_p_outside_range(name):
    with pytest.raises(AsymbpError, match="0-100"):
        AsymLinear(3, 2, scheme=name)
    with pytest.raises(AsymbpError, match="0-100"):
        AsymLinear(3, 2, scheme="brSF", p=-1)


def test_unconvertible_layer_type():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Linear(3, 2))
    with pytest.raises(AsymbpError) as e:
        asymbp.convert(model, "uSF")
    msg = str(e.value)
    assert "\n" not in msg and "Conv1d" in msg and "Linear, Conv2d" in msg
    assert type(model[1]) is nn.Linear  # nothing was changed
    asymbp.convert(model, "uSF", exclude=["0"])  # excluded: fine
    assert isinstance(model[1], AsymLinear)


def test_unknown_scheme_option():
    with pytest.raises(AsymbpError, match="takes no option"):
        AsymLinear(3, 2, scheme="uSF", sigma=0.1)


@pytest.mark.parametrize("rows", [3, 400])  # factored (small batch) and formed-V (large batch)
def test_pfa_linear_paths_agree_with_the_oracle(rows):
    torch.manual_seed(0)
    layer = AsymLinear(6, 4, scheme="PFA", seed=2, dtype=torch.float64)
    assert layer.feedback.factored_is_cheaper(rows) == (rows == 3)
    assert layer.feedback.factored_backward(rows) == (rows == 3)
    x = torch.randn(rows, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    B, R = layer.feedback.B, layer.feedback.R
    torch.testing.assert_close(x.grad, g @ (B @ R.detach()))  # Vᵀ g with V = B·R
    torch.testing.assert_close(R.grad, B.T @ (g.T @ x.detach()))  # Bᵀ g_W
    torch.testing.assert_close(layer.weight.grad, g.T @ x.detach())
