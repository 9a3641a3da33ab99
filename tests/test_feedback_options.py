"""The schemes' options against their definitions, computed independently in NumPy on the
layer's shapes: BioTorch's scaled uSF / brSF / frSF / FA (Sanfiz & Akrout 2021, README in
../shared/paper/) and Li & Benna's sparse feedback (`density`). The layer oracle (dE/dx = Vᵀg)
covers every option variant in test_layers.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import asymbp
from asymbp import AsymConv2d, AsymLinear, feedback
from asymbp.errors import AsymbpError

pytestmark = pytest.mark.usefixtures("one_thread")


def layers(scheme: str, seed: int = 4, **options):
    """A Linear (300 → 200) and a Conv2d (16 → 24, 3×3): 60 000 and 3 456 feedback weights."""
    torch.manual_seed(0)
    return [AsymLinear(300, 200, scheme=scheme, seed=seed, **options),
            AsymConv2d(16, 24, 3, scheme=scheme, seed=seed, **options)]


def np_fans(shape) -> tuple[int, int]:
    """fan_in, fan_out by hand: channels × receptive field (torch.nn.init's definition)."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def np_sign(W: torch.Tensor) -> np.ndarray:
    """sign(W) with a zero weight counted as +1 (DESIGN §2)."""
    return np.where(W.detach().numpy() < 0, -1.0, 1.0)


def test_fans_are_torch_inits():
    for layer in layers("BP"):
        W = layer.weight
        assert feedback.fans(W) == nn.init._calculate_fan_in_and_fan_out(W) == np_fans(W.shape)


def test_usf_xavier_is_c_sign_W():
    for layer in layers("uSF", scale="xavier"):
        W = layer.weight
        with torch.no_grad():
            W.view(-1)[:5] = 0.0  # zero weights count as +1
        fi, fo = np_fans(W.shape)
        c = math.sqrt(2.0 / (fi + fo))
        np.testing.assert_allclose(layer.feedback_weight().numpy(), c * np_sign(W), rtol=1e-6)
    # The default is today's sign(W); a number is that c.
    for layer in layers("uSF") + layers("uSF", scale=0.25):
        c = layer.feedback.c
        assert c == (1.0 if layer.feedback.scale == 1.0 else 0.25)
        np.testing.assert_array_equal(layer.feedback_weight().numpy(), c * np_sign(layer.weight))


def _check_uniform(values: np.ndarray, lo: float, hi: float) -> None:
    """values ~ U(lo, hi): inside the bounds, mean and variance within 5 standard errors."""
    n = values.size
    width = hi - lo
    assert values.min() >= lo and values.max() <= hi
    assert abs(values.mean() - (lo + hi) / 2) < 5 * width / math.sqrt(12 * n)
    # var of U is w²/12; the sample variance's standard error is √((μ₄ − σ⁴)/n) = w²/√(180 n)
    assert abs(values.var() - width**2 / 12) < 5 * width**2 / math.sqrt(180 * n)
    # and it really fills the range (not a narrower one)
    assert values.max() - values.min() > 0.95 * width


@pytest.mark.parametrize("scheme", ["brSF", "frSF"])
def test_sign_scheme_xavier_magnitude_is_abs_uniform_xavier(scheme):
    for layer in layers(scheme, magnitude="xavier"):
        W = layer.weight
        fi, fo = np_fans(W.shape)
        a = math.sqrt(6.0 / (fi + fo))
        V = layer.feedback_weight().numpy()
        np.testing.assert_array_equal(np.sign(V), np_sign(W))  # p = 0: exactly sign(W)'s signs
        _check_uniform(np.abs(V).ravel(), 0.0, a)  # |U(−a, a)| is U(0, a)
        # Redrawn each step (brSF), fixed (frSF).
        with torch.no_grad():
            W.add_(0.0)  # an optimizer step (version bump) that changes nothing
        again = layer.feedback_weight().numpy()
        assert np.array_equal(again, V) == (scheme == "frSF")


def test_rndf_xavier_is_fixed_xavier_uniform():
    for layer in layers("RndF", init="xavier"):
        fi, fo = np_fans(layer.weight.shape)
        a = math.sqrt(6.0 / (fi + fo))
        V = layer.feedback_weight()
        _check_uniform(V.numpy().ravel(), -a, a)
        with torch.no_grad():
            layer.weight.mul_(-3.0)
        assert torch.equal(layer.feedback_weight(), V)  # independent of W, never redrawn


def test_default_options_are_todays_schemes():
    """scale=1, magnitude="uniform", init="normal", density=1 are the schemes as they were: the
    same draws, and no new buffer (old checkpoints load)."""
    torch.manual_seed(0)
    W = torch.randn(7, 5)
    gen = asymbp.rng.cpu_generator(3)
    assert torch.equal(feedback.make("RndF", W, 3).V(W), torch.randn(7, 5, generator=gen) * 0.05)
    gen = asymbp.rng.cpu_generator(3)
    assert torch.equal(feedback.make("frSF", W, 3).V(W),
                       torch.rand(7, 5, generator=gen) * torch.from_numpy(np_sign(W)).float())
    for name in feedback.variants():
        scheme = feedback.make(name, W, 3)
        assert "mask" not in scheme.state_dict()
        if scheme.sparse:
            assert scheme.density == 1.0


@pytest.mark.parametrize("scheme,option,value", [
    ("uSF", "scale", "he"), ("uSF", "scale", -1.0), ("brSF", "magnitude", "normal"),
    ("frSF", "magnitude", 2), ("RndF", "init", "kaiming"),
    ("RndF", "density", 0.0), ("DFA", "density", 1.5), ("PFA", "density", "half"),
    ("sSF", "density", float("nan")), ("KP", "density", 0.5), ("BP", "scale", "xavier")])
def test_bad_option_is_one_line(scheme, option, value):
    with pytest.raises(AsymbpError) as err:
        AsymLinear(4, 3, scheme=scheme, seed=1, **{option: value})
    assert "\n" not in str(err.value) and option in str(err.value)


# -- sparse feedback (Li & Benna 2024): which matrix the mask is on ------------------------

SPARSE = [name for name, cls in feedback.SCHEMES.items() if cls.sparse]


def masked_matrix(layer) -> torch.Tensor:
    """The fixed feedback connections the mask is on: B for DFA and PFA, V for the others."""
    f = layer.feedback
    return f.B if isinstance(f, (feedback.DirectFeedbackAlignment,
                                 feedback.ProductFeedbackAlignment)) else layer.feedback_weight()


def test_every_fixed_feedback_scheme_is_sparse():
    assert set(SPARSE) == {"uSF", "NuSF", "sSF", "brSF", "frSF", "RndF", "PFA", "PFA-o", "DFA"}


@pytest.mark.parametrize("scheme", SPARSE)
@pytest.mark.parametrize("density", [0.05, 0.3])
def test_kept_fraction_is_density(scheme, density):
    for layer in layers(scheme, density=density):
        kept = masked_matrix(layer) != 0
        n = kept.numel()
        # Bernoulli(density) per connection: within 5 standard errors (n ≥ 576: DFA's conv B)
        assert abs(kept.double().mean().item() - density) < 5 * math.sqrt(density * (1 - density) / n)


@pytest.mark.parametrize("scheme", SPARSE)
def test_sparse_feedback_is_fixed_across_calls_steps_and_save_load(scheme):
    torch.manual_seed(0)
    model = asymbp.convert(asymbp.models.build("mnist", 10), scheme, seed=1, density=0.3)
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    opt = asymbp.optim.SGD(model.parameters(), lr=1e-2)
    first = [masked_matrix(l) != 0 for _, l in asymbp.asym_layers(model)]
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y, reduction="sum").backward()
        opt.step()
        for kept, (_, l) in zip(first, asymbp.asym_layers(model)):
            assert torch.equal(masked_matrix(l) != 0, kept)
    # Saved with the model: another seed's sparse model takes this one's connections on loading.
    other = asymbp.convert(asymbp.models.build("mnist", 10), scheme, seed=99, density=0.3)
    assert any(not torch.equal(masked_matrix(l) != 0, k)
               for k, (_, l) in zip(first, asymbp.asym_layers(other)))
    other.load_state_dict(model.state_dict())
    for (_, a), (_, b) in zip(asymbp.asym_layers(model), asymbp.asym_layers(other)):
        assert torch.equal(masked_matrix(a) != 0, masked_matrix(b) != 0)
        if not a.feedback.redrawn:
            assert torch.equal(a.feedback_weight(), b.feedback_weight())


@pytest.mark.parametrize("scheme", ["uSF", "frSF-25", "RndF", "DFA", "PFA"])
def test_sparse_keeps_the_dense_schemes_draws(scheme):
    """The mask comes from its own stream: a sparse V (or B) is the dense one with entries zeroed."""
    dense, sparse = layers(scheme)[0], layers(scheme, density=0.5)[0]
    d, s = masked_matrix(dense), masked_matrix(sparse)
    torch.testing.assert_close(s, d * (s != 0))


def test_sparse_dfa_lone_layer_input_gradient_is_masked_B():
    """A lone DFA Linear is random feedback with V = Bᵀ: dE/dx = B g with the masked B."""
    torch.manual_seed(0)
    layer = AsymLinear(12, 8, scheme="DFA", seed=2, density=0.3, dtype=torch.float64)
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 8, dtype=torch.float64)
    layer(x).backward(g)
    B = layer.feedback.B.numpy()
    assert (B == 0).any()
    np.testing.assert_allclose(x.grad.numpy(), g.numpy() @ B.T, rtol=1e-10, atol=1e-12)


def test_options_reach_a_run_through_scheme_options(tmp_path):
    """TrainConfig.scheme_options carries the options to every layer of a run (the sweep's
    experiments set them there); a bad one fails before anything trains."""
    from asymbp.train import train

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 6)).astype(np.float32), rng.integers(0, 3, size=60)
    path = tmp_path / "blobs.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    base = dict(dataset=f"npz:{path}", model="mlp", method="RndF", epochs=1, batch_size=20,
                alignment=True)
    dense = train(base)
    sparse = train({**base, "scheme_options": {"init": "xavier", "density": 0.3}})
    assert sparse["config"]["scheme_options"] == {"init": "xavier", "density": 0.3}
    assert sparse["epochs"][-1] != dense["epochs"][-1]
    with pytest.raises(AsymbpError, match="density"):
        train({**base, "scheme_options": {"density": 2}})


def test_parse_options_reads_key_value_texts():
    assert feedback.parse_options(["scale=xavier", "density=0.1", " alpha = 10 ",
                                   "orthogonal=True"]) == {
        "scale": "xavier", "density": 0.1, "alpha": 10, "orthogonal": True}
    assert feedback.parse_options([]) == {}
    layer = AsymLinear(6, 4, scheme="uSF", seed=1, **feedback.parse_options(["scale=0.5"]))
    assert layer.feedback.c == 0.5
    for bad in ["scale", "=xavier", "density=", "two words=1"]:
        with pytest.raises(AsymbpError, match="KEY=VALUE"):
            feedback.parse_options([bad])


@pytest.mark.parametrize("scheme,options", [
    ("brSF", {"p": 25, "magnitude": "xavier", "density": 0.3}), ("uSF", {"scale": "xavier"})])
def test_compile_gives_eager_gradients_with_options(scheme, options):
    torch.manual_seed(0)
    model = asymbp.convert(nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
                                         nn.Flatten(), nn.Linear(64, 3)), scheme, seed=1, **options)
    x, y = torch.randn(5, 2, 8, 8), torch.tensor([0, 1, 2, 0, 1])

    def grads(net):
        model.zero_grad()
        F.cross_entropy(net(x), y, reduction="sum").backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager = grads(model)  # the same draw for both: W is not updated in between
    for a, b in zip(eager, grads(torch.compile(model, backend="aot_eager"))):
        torch.testing.assert_close(a, b)
