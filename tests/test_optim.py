"""Oracle tests for the paper's update rules (DESIGN §3).

Every rule is evaluated a second time, by hand, in NumPy, straight from the equations:

    w(t+1) = w(t) + η τ(t)
    SGD:  τ(t) = −g + m τ(t−1) − d w(t)
    BM1:  τ(t) = −sign(g) + m τ(t−1) − d w(t)
    BM2:  τ(t) = sign(−sign(g) + m τ(t−1) − d w(t))
    BM3:  τ(t) = sign(κ(t)),  κ(t) = −sign(g) + m κ(t−1) − d w(t)
    Adam: g' = g + d w;  a = β1 a + (1 − β1) g';  v = β2 v + (1 − β2) g'²
          τ(t) = −(a / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + ε)   (β = 0.9, 0.999; ε = 1e-8;
          m is not Adam's: make_optimizer passes it to SGD and BM only)

with sign(0) = 0, and the optimizers must agree with it over three steps.
"""

import numpy as np
import pytest
import torch

from asymbp.errors import AsymbpError
from asymbp.optim import SGD, UPDATE_RULES, BatchManhattan, make_optimizer

RULES = list(UPDATE_RULES)  # a new rule is tested the day it is registered (and needs an oracle)


pytestmark = pytest.mark.usefixtures("one_thread")


def oracle(rule: str, w0, grads, lr, m, d):
    """The weights after each step, computed from DESIGN §3 with NumPy in float64."""
    w = np.array(w0, dtype=np.float64)
    buf = np.zeros_like(w)  # τ(t−1), or κ(t−1) for BM3, or Adam's first moment
    v, t = np.zeros_like(w), 0  # Adam's second moment and step count
    out = []
    for g in grads:
        g = np.asarray(g, dtype=np.float64)
        if rule == "SGD":
            tau = -g + m * buf - d * w
            buf = tau
        elif rule == "BM1":
            tau = -np.sign(g) + m * buf - d * w
            buf = tau
        elif rule == "BM2":
            tau = np.sign(-np.sign(g) + m * buf - d * w)
            buf = tau
        elif rule == "BM3":
            buf = -np.sign(g) + m * buf - d * w  # κ(t)
            tau = np.sign(buf)
        elif rule == "Adam":
            t, gd = t + 1, g + d * w
            buf = 0.9 * buf + 0.1 * gd
            v = 0.999 * v + 0.001 * gd * gd
            tau = -(buf / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        else:
            raise AssertionError(f"no oracle for the update rule {rule}: write its equation here")
        w = w + lr * tau
        out.append(w.copy())
    return out


def make(rule, params, lr, m, d):
    return make_optimizer(rule, params, lr=lr, momentum=m, weight_decay=d)


def _grads(shape, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    gs = []
    for _ in range(steps):
        g = rng.normal(size=shape)
        g[rng.random(shape) < 0.25] = 0.0  # exact zeros: sign(0) = 0
        gs.append(g)
    return gs


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("m,d", [(0.9, 5e-4), (0.0, 0.0), (0.5, 0.1)])
def test_three_steps_equal_the_equations(rule, m, d):
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 4))
    w0[0, 0] = 0.0
    grads = _grads(w0.shape)
    lr = 0.1
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = make(rule, [w], lr, m, d)
    expected = oracle(rule, w0, grads, lr, m, d)
    for g, want in zip(grads, expected):
        w.grad = torch.tensor(g)
        opt.step()
        # float64, |w| ≲ 3 after a few operations a step (a vectorised kernel may fuse a
        # multiply-add): ~3 steps · 4 ops · eps₆₄ · 3 ≈ 1e-14 (measured: 2e-16)
        np.testing.assert_allclose(w.detach().numpy(), want, rtol=0, atol=1e-12)


def test_sign_of_zero_gradient_is_zero():
    # No momentum, no decay: a zero gradient must leave the weight exactly where it is.
    for rule in ["BM1", "BM2", "BM3"]:
        w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        opt = make(rule, [w], 0.5, 0.0, 0.0)
        w.grad = torch.tensor([0.0, 4.0, -1e-30])
        opt.step()
        assert w.tolist() == [1.0, -2.5, 3.5], rule


def test_bm_step_size_does_not_depend_on_gradient_magnitude():
    for scale in (1e-6, 1.0, 1e6):
        w = torch.nn.Parameter(torch.zeros(2))
        opt = BatchManhattan([w], lr=0.01, momentum=0.0, weight_decay=0.0, setting=1)
        w.grad = torch.tensor([scale, -scale])
        opt.step()
        assert torch.allclose(w, torch.tensor([-0.01, 0.01]))


@pytest.mark.parametrize("rule", RULES)
def test_param_groups_use_their_own_settings(rule):
    rng = np.random.default_rng(2)
    w0a, w0b = rng.normal(size=5), rng.normal(size=(2, 2))
    ga, gb = _grads(w0a.shape, seed=3), _grads(w0b.shape, seed=4)
    a = torch.nn.Parameter(torch.tensor(w0a))
    b = torch.nn.Parameter(torch.tensor(w0b))
    opt = make(rule, [{"params": [a]}, {"params": [b], "lr": 0.3, "momentum": 0.5,
                                        "weight_decay": 0.2}], 0.1, 0.9, 5e-4)
    want_a = oracle(rule, w0a, ga, 0.1, 0.9, 5e-4)
    want_b = oracle(rule, w0b, gb, 0.3, 0.5, 0.2)
    for t in range(3):
        a.grad, b.grad = torch.tensor(ga[t]), torch.tensor(gb[t])
        opt.step()
        np.testing.assert_allclose(a.detach().numpy(), want_a[t], atol=1e-12)
        np.testing.assert_allclose(b.detach().numpy(), want_b[t], atol=1e-12)


@pytest.mark.parametrize("rule", RULES)
def test_lr_changed_between_steps_is_used(rule):
    # train() sets group["lr"] every epoch (the step schedule).
    w0 = np.array([0.5, -0.25, 0.0])
    grads = _grads(w0.shape, seed=5)
    w = torch.nn.Parameter(torch.tensor(w0))
    opt = make(rule, [w], 0.1, 0.9, 5e-4)
    want = oracle(rule, w0, grads[:1], 0.1, 0.9, 5e-4)[0]
    w.grad = torch.tensor(grads[0])
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), want, atol=1e-12)
    opt.param_groups[0]["lr"] = 0.01
    # continue the oracle from the same momentum state with the new learning rate
    ref = make(rule, [torch.nn.Parameter(torch.tensor(w0))], 0.1, 0.9, 5e-4)
    ref.param_groups[0]["params"][0].grad = torch.tensor(grads[0])
    ref.step()
    ref.param_groups[0]["lr"] = 0.01
    w.grad = torch.tensor(grads[1])
    ref.param_groups[0]["params"][0].grad = torch.tensor(grads[1])
    opt.step()
    ref.step()
    assert torch.equal(w, ref.param_groups[0]["params"][0])
    assert not torch.equal(w, torch.tensor(oracle(rule, w0, grads[:2], 0.1, 0.9, 5e-4)[1]))


@pytest.mark.parametrize("rule", RULES)
def test_param_without_grad_is_untouched(rule):
    a = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    b = torch.nn.Parameter(torch.tensor([2.0, -2.0]))
    opt = make(rule, [a, b], 0.1, 0.9, 0.5)  # large decay: it would show if applied
    for _ in range(3):
        a.grad = torch.tensor([1.0, 1.0])
        b.grad = None
        opt.step()
    assert b.tolist() == [2.0, -2.0]
    assert b not in opt.state or not opt.state[b]
    assert a.tolist() != [1.0, -1.0]


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_round_trip(rule):
    w0 = np.random.default_rng(6).normal(size=(4,))
    grads = _grads(w0.shape, seed=7)
    full = torch.nn.Parameter(torch.tensor(w0))
    opt = make(rule, [full], 0.1, 0.9, 5e-4)
    for g in grads:
        full.grad = torch.tensor(g)
        opt.step()

    part = torch.nn.Parameter(torch.tensor(w0))
    opt1 = make(rule, [part], 0.1, 0.9, 5e-4)
    part.grad = torch.tensor(grads[0])
    opt1.step()
    saved = opt1.state_dict()
    resumed = torch.nn.Parameter(part.detach().clone())
    opt2 = make(rule, [resumed], 0.5, 0.0, 0.0)  # constructor values are overwritten
    opt2.load_state_dict(saved)
    for g in grads[1:]:
        resumed.grad = torch.tensor(g)
        opt2.step()
    assert torch.equal(resumed, full)


def test_update_rule_registry_and_errors():
    assert set(UPDATE_RULES) == {"SGD", "BM1", "BM2", "BM3", "Adam"}
    w = torch.nn.Parameter(torch.zeros(1))
    assert isinstance(make_optimizer("bm", [w], lr=0.1), BatchManhattan)
    assert make_optimizer("BM", [w], lr=0.1).defaults["setting"] == 1
    assert isinstance(make_optimizer("sgd", [w], lr=0.1), SGD)
    with pytest.raises(AsymbpError, match="BM2"):
        make_optimizer("BM4", [w], lr=0.1)
    with pytest.raises(AsymbpError):
        BatchManhattan([w], lr=0.1, setting=4)
    with pytest.raises(AsymbpError):
        SGD([w], lr=-1.0)
    with pytest.raises(AsymbpError):
        SGD([w], lr=0.1, momentum=1.0)


def test_bm_is_an_alias_of_bm1_in_the_registry():
    assert UPDATE_RULES["bm"] is UPDATE_RULES["BM1"] and "BM" not in list(UPDATE_RULES)
    with pytest.raises(AsymbpError) as e:
        make_optimizer("adamw", [torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    msg = str(e.value)
    assert "\n" not in msg and "SGD, BM1, BM2, BM3, Adam" in msg and "BM = BM1" in msg


def test_closure_returns_loss():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    for opt in (SGD([w], lr=0.1), BatchManhattan([w], lr=0.1)):
        def closure():
            opt.zero_grad()
            loss = (w ** 2).sum()
            loss.backward()
            return loss
        assert float(opt.step(closure).detach()) > 0
