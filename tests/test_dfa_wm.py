"""Direct feedback alignment (DFA) and weight mirrors (WM) against oracles written out by hand.

DFA: every asymmetric layer's input receives B e (e = softmax − onehot for the summed
cross-entropy, computed here independently of autograd; a conv input gets B e / (H·W) at every
position); weight gradients are exactly g xᵀ for the g that arrives; the classifier's gradient
equals BP's. WM: one mirror step is V ← V + η (W x)ᵀ... written with einsum; V's angle to W falls.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import asymbp
from asymbp import AsymConv2d, AsymLinear, feedback
from asymbp.errors import AsymbpError
from asymbp.metrics import angle, error_signal_alignment, layer_alignment

# One thread: the numbers do not depend on the count that the machine or an earlier test left
# (and tiny tensors are faster on one).
pytestmark = pytest.mark.usefixtures("one_thread")


def _net():
    # conv (no input grad) -> relu -> conv -> relu -> flatten -> fc -> relu -> fc (classifier)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(),
                         nn.Linear(6, 5))


def _record(model):
    """Each asymmetric layer's input x and output error g, captured during one backward."""
    rec = {}

    def hook(name):
        def fwd(module, inputs, output):
            x = inputs[0]
            if x.requires_grad:
                x.retain_grad()
            output.register_hook(lambda g: rec.__setitem__((name, "g"), g.detach()))
            rec[(name, "x")] = x
        return fwd

    for name, layer in asymbp.asym_layers(model):
        layer.register_forward_hook(hook(name))
    return rec


@pytest.mark.parametrize("spatial", ["mean", "sum"])
def test_dfa_input_gradient_is_projected_output_error(spatial):
    torch.manual_seed(0)
    model = asymbp.convert(_net().double(), "DFA", seed=3, spatial=spatial)
    rec = _record(model)
    x = torch.randn(7, 2, 9, 9, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    out = model(x)
    F.cross_entropy(out, y, reduction="sum").backward()
    e = torch.softmax(out.detach(), 1) - F.one_hot(y, 5).double()  # (N, C), by hand

    layers = asymbp.asym_layers(model)
    assert [l.feedback.num_classes for _, l in layers] == [5] * 4  # inferred at convert time
    for name, layer in layers[1:]:  # the first layer's input needs no gradient
        B = layer.feedback.B  # (n_in, C)
        xin = rec[(name, "x")]
        expected = e @ B.T  # (N, n_in)
        if xin.dim() == 4:  # conv: the same error at every position
            H, W = xin.shape[2:]
            scale = 1.0 / (H * W) if spatial == "mean" else 1.0
            expected = (expected * scale)[:, :, None, None].expand_as(xin)
        # float64, sums of ≤ 5 products of O(1) values: ~5·eps₆₄ ≈ 1e-15 (measured: 1e-16)
        torch.testing.assert_close(xin.grad, expected, rtol=1e-12, atol=1e-12)

    # Weight and bias gradients: exactly the local rule for the error g that arrived.
    for name, layer in layers:
        xin, g = rec[(name, "x")].detach(), rec[(name, "g")]
        W2 = layer.weight.detach().clone().requires_grad_(True)
        b2 = layer.bias.detach().clone().requires_grad_(True)
        if isinstance(layer, nn.Conv2d):
            ref = F.conv2d(xin, W2, b2, layer.stride, layer.padding)
        else:
            ref = F.linear(xin, W2, b2)
        ref.backward(g)
        # float64 sums over the batch × positions (≤ 7·81 terms): ≤ 567·eps₆₄ ≈ 1.3e-13
        torch.testing.assert_close(layer.weight.grad, W2.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, b2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rec[(layers[-1][0], "g")], e)  # the classifier's g is e


def test_dfa_classifier_learns_as_bp_and_forward_is_unchanged():
    torch.manual_seed(0)
    plain = _net().double()
    dfa = asymbp.convert(copy.deepcopy(plain), "DFA", seed=1)
    x = torch.randn(6, 2, 9, 9, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    outs = []
    for m in (plain, dfa):
        out = m(x)
        outs.append(out)
        F.cross_entropy(out, y, reduction="sum").backward()
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(plain[7].weight.grad, dfa[7].weight.grad)
    torch.testing.assert_close(plain[7].bias.grad, dfa[7].bias.grad)
    # ... and the hidden layers do not (their error is B e, not Wᵀ g)
    assert angle(plain[5].weight.grad, dfa[5].weight.grad) > 1


def test_dfa_each_forward_keeps_its_own_output_error():
    torch.manual_seed(0)
    model = asymbp.convert(_net().double(), "DFA", seed=1)
    x1, x2 = torch.randn(3, 2, 9, 9).double(), torch.randn(3, 2, 9, 9).double()
    y1, y2 = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 0])

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    a = grads(F.cross_entropy(model(x1), y1, reduction="sum"))
    b = grads(F.cross_entropy(model(x2), y2, reduction="sum"))
    both = grads(F.cross_entropy(model(x1), y1, reduction="sum")
                 + F.cross_entropy(model(x2), y2, reduction="sum"))
    for ga, gb, gab in zip(a, b, both):
        torch.testing.assert_close(ga + gb, gab)


def test_dfa_lone_linear_is_random_feedback_with_V_B_transpose():
    torch.manual_seed(0)
    layer = AsymLinear(6, 4, scheme="DFA", seed=2, dtype=torch.float64)
    V = layer.feedback_weight()
    assert V.shape == layer.weight.shape
    torch.testing.assert_close(V, layer.feedback.B.T)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 4, dtype=torch.float64)
    layer(x).backward(g)
    torch.testing.assert_close(x.grad, g @ V)


def test_dfa_lone_conv_sums_its_output_error_over_positions():
    layer = AsymConv2d(3, 4, 3, padding=1, scheme="DFA", seed=2, dtype=torch.float64)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    layer(x).backward(g)
    e = g.sum((2, 3))  # (N, C_out)
    expected = (e @ layer.feedback.B.T / 25)[:, :, None, None].expand_as(x)
    torch.testing.assert_close(x.grad, expected)
    assert not layer.feedback_weight().any()  # no V in W's shape for a conv


def test_dfa_hidden_layers_report_no_V_angle_but_error_signal_angles():
    torch.manual_seed(0)
    model = asymbp.convert(asymbp.models.build("mnist", 10), "DFA", seed=1)
    rows = layer_alignment(model)
    assert all(r["angle"] != r["angle"] for r in rows[:-1])  # NaN: B is not in W's shape
    assert 0 < rows[-1]["angle"] < 180  # the classifier: V = Bᵀ
    sig = error_signal_alignment(model, torch.randn(4, 1, 28, 28), torch.arange(4))
    # The classifier's error is e under both: the angle of a vector with itself, whose float64
    # cosine is within ~n·eps₆₄ of 1 (n = 40 values), so acos gives up to ~5e-6° (2 ulps below
    # 1 already give 1.2e-6°); a real difference is degrees.
    assert sig[-1]["grad_angle"] < 1e-3
    assert all(0 < r["grad_angle"] <= 180 for r in sig[:-1])


@pytest.mark.parametrize("key,shape,bn", [
    ("mnist", (2, 1, 28, 28), False), ("mnist", (2, 1, 28, 28), True),
    ("cifar", (2, 3, 32, 32), True), ("svhn", (2, 3, 32, 32), False),
    ("mlp", (2, 30), True), ("resnet20", (2, 3, 32, 32), True),
    ("resnet18", (2, 3, 32, 32), False), ("large", (2, 3, 119, 119), False),
])
def test_dfa_through_convert_on_every_network(key, shape, bn):
    torch.manual_seed(0)
    kw = {"in_channels": shape[1]} if len(shape) == 2 else {}
    model = asymbp.convert(asymbp.models.build(key, 7, bn=bn, **kw), "DFA", seed=1)
    assert {l.feedback.num_classes for _, l in asymbp.asym_layers(model)} == {7}
    F.cross_entropy(model(torch.randn(*shape)), torch.tensor([1, 6]), reduction="sum").backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_dfa_method_strings_and_options():
    spec = asymbp.parse_method("DFA+BN+BM")
    assert (spec.scheme, spec.bn, spec.update) == ("DFA", True, "BM1")
    model = asymbp.convert(_net(), "DFA", num_classes=5, scale=2.0)
    assert asymbp.asym_layers(model)[0][1].feedback.scale == 2.0
    with pytest.raises(AsymbpError, match="spatial"):
        AsymLinear(3, 2, scheme="DFA", spatial="max")
    asymbp.convert(model, "uSF")  # converting away removes the output-error hooks
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_dfa_compiles_to_eager_gradients():
    torch.manual_seed(0)
    model = asymbp.convert(_net(), "DFA", seed=1)
    x, y = torch.randn(5, 2, 9, 9), torch.tensor([0, 1, 2, 3, 4])

    def grads(m):
        model.zero_grad()
        F.cross_entropy(m(x), y, reduction="sum").backward()
        return [p.grad.clone() for p in model.parameters()]

    eager = grads(model)
    for a, b in zip(eager, grads(torch.compile(model, backend="aot_eager"))):
        torch.testing.assert_close(a, b)


def test_dfa_state_dict_and_deepcopy():
    torch.manual_seed(0)
    model = asymbp.convert(_net(), "DFA", seed=1)
    other = asymbp.convert(_net(), "DFA", seed=9)
    other.load_state_dict(model.state_dict())
    for (_, a), (_, b) in zip(asymbp.asym_layers(model), asymbp.asym_layers(other)):
        assert torch.equal(a.feedback.B, b.feedback.B)
    twin = copy.deepcopy(model)
    x, y = torch.randn(3, 2, 9, 9), torch.tensor([0, 1, 2])
    for m in (model, twin):
        F.cross_entropy(m(x), y, reduction="sum").backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


# ---- weight mirrors -----------------------------------------------------------------------


def _wm(layer_kind):
    torch.manual_seed(0)
    opts = dict(scheme="WM", seed=4, dtype=torch.float64, mirror_lr=0.3, mirror_decay=0.1,
                mirror_batch=5, sigma=0.7)
    if layer_kind == "linear":
        return AsymLinear(4, 3, **opts)
    if layer_kind == "conv":
        return AsymConv2d(2, 3, (2, 3), padding=1, stride=2, **opts)
    return AsymConv2d(4, 6, 3, dilation=2, groups=2, **opts)


@pytest.mark.parametrize("kind", ["linear", "conv", "conv-dil2-g2"])
def test_mirror_update_is_the_rule_by_hand(kind):
    layer = _wm(kind)
    f = layer.feedback
    V0, W = f.weight.clone(), layer.weight.detach()
    x = f.noise(layer)
    assert x.shape[0] == 5
    dV = f.mirror_update(layer, x)
    eta, lam, N = 0.3, 0.1, 5
    if kind == "linear":
        y = torch.einsum("oi,ni->no", W, x)  # y = W x, no bias
        yx = torch.einsum("no,ni->oi", y, x)
    else:
        # x is one patch per example: y[n, o] = Σ W[o, c, i, j] · x[n, c, d·i, d·j] per group
        d, G = layer.dilation[0], layer.groups
        xs = x[:, :, ::d, ::d]  # (N, C_in, kh, kw): the taps the kernel touches
        cg, og = W.shape[1], W.shape[0] // G
        yx = torch.zeros_like(W)
        for gi in range(G):
            Wg, xg = W[gi * og:(gi + 1) * og], xs[:, gi * cg:(gi + 1) * cg]
            y = torch.einsum("ocij,ncij->no", Wg, xg)
            yx[gi * og:(gi + 1) * og] = torch.einsum("no,ncij->ocij", y, xg)
    expected = eta * yx / N - lam * V0
    torch.testing.assert_close(dV, expected)
    torch.testing.assert_close(f.weight, V0 + expected)
    torch.testing.assert_close(layer.feedback_weight(), f.weight)


def test_mirror_noise_has_sigma_and_zero_mean():
    layer = AsymLinear(50, 3, scheme="WM", seed=1, mirror_batch=4000, sigma=0.5)
    x = layer.feedback.noise(layer)
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 0.5) < 0.01


def test_mirror_steps_make_V_point_along_W():
    torch.manual_seed(0)
    model = asymbp.convert(asymbp.models.build("mnist", 10), "WM", seed=1)
    angles = [[r["angle"] for r in layer_alignment(model)]]
    for _ in range(3):
        assert feedback.mirror_step(model, steps=20) == 4
        angles.append([r["angle"] for r in layer_alignment(model)])
    assert all(a > 80 for a in angles[0])  # V starts independent of W
    for before, after in zip(angles, angles[1:]):
        assert all(b < a for a, b in zip(before, after)), angles
    assert all(a < 40 for a in angles[-1]), angles


def test_wm_V_is_not_trained_by_the_optimizer_and_is_saved():
    torch.manual_seed(0)
    model = asymbp.convert(asymbp.models.build("mnist", 10), "WM", seed=1)
    assert not any(p is l.feedback.weight for _, l in asymbp.asym_layers(model)
                   for p in model.parameters())
    opt = asymbp.optim.SGD(model.parameters(), lr=0.1)
    before = [l.feedback_weight() for _, l in asymbp.asym_layers(model)]
    F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.arange(4), reduction="sum").backward()
    opt.step()
    for (_, l), V in zip(asymbp.asym_layers(model), before):
        assert torch.equal(l.feedback_weight(), V)
    # state_dict keeps V and the noise generator: the next mirror step is the same
    feedback.mirror_step(model)
    other = asymbp.convert(asymbp.models.build("mnist", 10), "WM", seed=7)
    other.load_state_dict(model.state_dict())
    for m in (model, other):
        feedback.mirror_step(m)
    for (_, a), (_, b) in zip(asymbp.asym_layers(model), asymbp.asym_layers(other)):
        torch.testing.assert_close(a.feedback_weight(), b.feedback_weight())


def test_mirror_schedule_is_warmup_then_steps_every_n():
    """The schedule train() follows, against the same mirror steps called by hand."""
    cfg = asymbp.train.TrainConfig(mirror_every=3, mirror_steps=2, mirror_warmup=5)
    model = asymbp.convert(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), "WM", seed=1)
    by_hand = copy.deepcopy(model)
    schedule = feedback.MirrorSchedule.from_config(model, cfg)
    schedule.warmup()
    feedback.mirror_step(by_hand, 5)
    for step in range(1, 8):
        schedule.after_step()
        if step % 3 == 0:
            feedback.mirror_step(by_hand, 2)
        for (_, a), (_, b) in zip(asymbp.asym_layers(model), asymbp.asym_layers(by_hand)):
            assert torch.equal(a.feedback_weight(), b.feedback_weight()), step
    plain = asymbp.convert(nn.Linear(4, 3), "uSF")
    idle = feedback.MirrorSchedule.from_config(plain, cfg)
    assert not idle.active and feedback.mirrored_layers(model)[0][0] is model[0]
    idle.warmup()
    idle.after_step()  # nothing to mirror: nothing happens


def test_train_interleaves_mirror_steps(tmp_path):
    from asymbp.train import train

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(260, 1, 28, 28, generator=g).numpy()
    ys = torch.randint(0, 3, (260,), generator=g).numpy()
    import numpy as np

    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=xs[:200], y_train=ys[:200], x_test=xs[200:], y_test=ys[200:])
    base = dict(dataset=f"npz:{path}", model="mnist", epochs=1, batch_size=50, seed=1,
                bn_stats="running")
    out = train({**base, "method": "WM", "mirror_steps": 10})
    assert not out["diverged"]
    assert all(r["angle"] < 60 for r in out["epochs"][0]["alignment"])  # 4 steps × 10 mirrors
    warm = train({**base, "method": "WM", "mirror_steps": 0, "mirror_warmup": 40})
    assert all(r["angle"] < 60 for r in warm["epochs"][0]["alignment"])  # 40 mirrors up front
    out = train({**base, "method": "DFA+BN+BM"})
    assert not out["diverged"] and out["method"] == "DFA+BN+BM"
    with pytest.raises(AsymbpError, match="mirror_every"):
        train({**base, "method": "WM", "mirror_every": 0})
