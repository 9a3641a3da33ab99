"""asymbp.optim.Adam against Adam's equations in NumPy float64 and against torch.optim.Adam.

    g' = g + d w;  m = β1 m + (1 − β1) g';  v = β2 v + (1 − β2) g'²
    w = w − η (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + ε)

t counts the steps a parameter took (one without a gradient takes none).
"""

import numpy as np
import pytest
import torch

from asymbp import convert
from asymbp.errors import AsymbpError
from asymbp.models import build
from asymbp.optim import Adam

pytestmark = pytest.mark.usefixtures("one_thread")


def oracle(w0, grads, lr, b1, b2, eps, d):
    """The weights after each step, straight from the equations, in float64; None = no grad."""
    w = np.array(w0, dtype=np.float64)
    m, v, t, out = np.zeros_like(w), np.zeros_like(w), 0, []
    for g in grads:
        if g is not None:
            t += 1
            g = np.asarray(g, dtype=np.float64) + d * w
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        out.append(w.copy())
    return out


def grads_for(shape, steps, seed, skip=()):
    rng = np.random.default_rng(seed)
    out = []
    for s in range(steps):
        g = rng.normal(size=shape) * 10.0 ** rng.integers(-3, 2)
        g[rng.random(shape) < 0.2] = 0.0
        out.append(None if s in skip else g)
    return out


@pytest.mark.parametrize("b1,b2,eps,d", [(0.9, 0.999, 1e-8, 1e-4), (0.5, 0.9, 1e-3, 0.0),
                                         (0.0, 0.99, 1e-8, 0.1)])
def test_steps_equal_the_equations(b1, b2, eps, d):
    rng = np.random.default_rng(0)
    w0, u0 = rng.normal(size=(3, 4)), rng.normal(size=(5,))
    gw = grads_for(w0.shape, 6, 1)
    gu = grads_for(u0.shape, 6, 2, skip={0, 3})  # no gradient at steps 1 and 4: skipped
    w = torch.nn.Parameter(torch.tensor(w0))
    u = torch.nn.Parameter(torch.tensor(u0))
    # two groups as asymbp makes them (weights, feedback), each with its own lr and decay
    opt = Adam([{"params": [w], "kind": "weights"},
                {"params": [u], "kind": "feedback", "lr": 0.05, "weight_decay": 2 * d}],
               lr=0.01, betas=(b1, b2), eps=eps, weight_decay=d)
    want_w = oracle(w0, gw, 0.01, b1, b2, eps, d)
    want_u = oracle(u0, gu, 0.05, b1, b2, eps, 2 * d)
    for step in range(6):
        w.grad = torch.tensor(gw[step])
        u.grad = None if gu[step] is None else torch.tensor(gu[step])
        opt.step()
        # float64, a dozen operations a step on |w| ≲ 3: ~1e-14 (the skipped steps exactly)
        np.testing.assert_allclose(w.detach().numpy(), want_w[step], rtol=0, atol=1e-12)
        np.testing.assert_allclose(u.detach().numpy(), want_u[step], rtol=0, atol=1e-12)
    assert [g["kind"] for g in opt.param_groups] == ["weights", "feedback"]


def _run(opt_cls, model, batches, lr_at=None, **kw):
    opt = opt_cls(model.parameters(), **kw)
    for i, (x, y) in enumerate(batches):
        if lr_at and i in lr_at:
            for group in opt.param_groups:  # as the training loop sets each epoch's rate
                group["lr"] = lr_at[i]
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


def test_equals_torch_adam_bitwise_on_a_converted_network():
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(5)]
    finals = []
    for cls in (Adam, torch.optim.Adam):
        torch.manual_seed(0)
        model = convert(build("mnist", 10, bn=True, bn_affine=True), "uSF", seed=0)
        _run(cls, model, batches, lr_at={3: 1e-4}, lr=1e-3, betas=(0.9, 0.999),
             weight_decay=1e-4)
        finals.append([p.detach().clone() for p in model.parameters()])
    for ours, theirs in zip(*finals):
        assert torch.equal(ours, theirs)  # the same kernels on the same gradients


def test_state_dict_resumes_the_same_run():
    torch.manual_seed(0)
    batches = [(torch.randn(4, 12), torch.randint(0, 3, (4,))) for _ in range(6)]
    torch.manual_seed(1)
    straight = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    resumed = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    resumed.load_state_dict(straight.state_dict())
    _run(Adam, straight, batches, weight_decay=1e-2)
    first = _run(Adam, resumed, batches[:3], weight_decay=1e-2)
    again = Adam(resumed.parameters(), weight_decay=1e-2)
    again.load_state_dict(first.state_dict())
    for x, y in batches[3:]:
        again.zero_grad()
        torch.nn.functional.cross_entropy(resumed(x), y).backward()
        again.step()
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(lr=float("nan")), dict(weight_decay=-1e-4),
                                    dict(betas=(0.9, 1.0)), dict(betas=(-0.1, 0.999)),
                                    dict(betas=0.9), dict(eps=-1e-8)])
def test_bad_arguments_are_one_line(kwargs):
    with pytest.raises(AsymbpError) as err:
        Adam([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    assert "\n" not in str(err.value)
