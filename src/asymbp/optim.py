"""The paper's update rules (Liao, Leibo & Poggio 2016, Section 3; DESIGN §3), and Adam.

    w(t+1) = w(t) + η τ(t)

    SGD (setting 0):  τ(t) = −g + m τ(t−1) − d w(t)
    BM1 (= BM):       τ(t) = −sign(g) + m τ(t−1) − d w(t)
    BM2:              τ(t) = sign(−sign(g) + m τ(t−1) − d w(t))
    BM3:              τ(t) = sign(κ(t)),  κ(t) = −sign(g) + m κ(t−1) − d w(t)

g is the gradient summed over the mini-batch, sign(0) = 0. Both are ordinary
`torch.optim.Optimizer`s: param groups, `state_dict`, any parameter (learned feedback, BN's
affine parameters) included. A parameter without a gradient is skipped (no decay either).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from .errors import AsymbpError
from .registry import Registry

# name -> (optimizer class, constructor kwargs): the update rules of method strings
UPDATE_RULES: Registry[tuple[type[Optimizer], dict]] = Registry("update rule", hint="BM = BM1")


def _check(lr, momentum, weight_decay):
    if not lr >= 0:
        raise AsymbpError(f"learning rate must be >= 0, got {lr}")
    if not 0 <= momentum < 1:
        raise AsymbpError(f"momentum must be in [0, 1), got {momentum}")
    if not weight_decay >= 0:
        raise AsymbpError(f"weight decay must be >= 0, got {weight_decay}")


def _params_with_grad(group) -> tuple[list[Tensor], list[Tensor]]:
    params = [p for p in group["params"] if p.grad is not None]
    return params, [p.grad for p in params]


class SGD(Optimizer):
    """The paper's SGD with momentum and weight decay (setting 0).

    Arguments:
        params: parameters or param groups.
        lr: η.
        momentum: m (0.9 in the paper).
        weight_decay: d (MatConvNet's default 5e-4).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
        _check(lr, momentum, weight_decay)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = _params_with_grad(group)
            if not params:
                continue
            taus = [self._tau(p) for p in params]
            m, d = group["momentum"], group["weight_decay"]
            torch._foreach_mul_(taus, m)  # m τ(t−1)
            torch._foreach_sub_(taus, grads)  # − g
            if d:
                torch._foreach_add_(taus, params, alpha=-d)  # − d w(t)
            torch._foreach_add_(params, taus, alpha=group["lr"])  # w += η τ(t)
        return loss

    def _tau(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "tau" not in state:
            state["tau"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["tau"]


class BatchManhattan(Optimizer):
    """Batch Manhattan: sign-of-gradient updates with momentum (settings 1, 2, 3).

    Arguments:
        params: parameters or param groups.
        lr: η.
        momentum: m (0.9).
        weight_decay: d (5e-4).
        setting: 1 (BM1 = BM), 2 (BM2) or 3 (BM3); see the module docstring.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                 setting: int = 1):
        _check(lr, momentum, weight_decay)
        if setting not in (1, 2, 3):
            raise AsymbpError(f"Batch Manhattan setting must be 1, 2 or 3, got {setting}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      setting=setting))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = _params_with_grad(group)
            if not params:
                continue
            m, d, setting = group["momentum"], group["weight_decay"], group["setting"]
            bufs = []  # τ(t−1) for settings 1–2, κ(t−1) for setting 3
            for p in params:
                state = self.state[p]
                if "buf" not in state:
                    state["buf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state["buf"])
            torch._foreach_mul_(bufs, m)
            torch._foreach_sub_(bufs, torch._foreach_sign(grads))  # − sign(g)
            if d:
                torch._foreach_add_(bufs, params, alpha=-d)
            if setting == 1:
                torch._foreach_add_(params, bufs, alpha=group["lr"])  # τ = buf
            elif setting == 2:
                torch._foreach_sign_(bufs)  # τ = sign(...), kept as τ(t−1) for the next step
                torch._foreach_add_(params, bufs, alpha=group["lr"])
            else:
                torch._foreach_add_(params, torch._foreach_sign(bufs), alpha=group["lr"])
        return loss


# ---- Adam, for BioTorch's protocols (DESIGN §9a) ----------------------------------------------


def adam_betas(value: str | tuple | list) -> tuple[float, float]:
    """"0.9,0.999" or (0.9, 0.999) -> (β1, β2), each in [0, 1); else the one-line error."""
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        b1, b2 = (float(b) for b in parts)
    except (TypeError, ValueError):
        raise AsymbpError(f"bad Adam betas {value!r}; expected two numbers 'B1,B2', e.g. "
                          "'0.9,0.999'") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise AsymbpError(f"Adam's betas must be in [0, 1), got ({b1}, {b2}); e.g. "
                          "'0.9,0.999'")
    return b1, b2


class Adam(torch.optim.Adam):
    """Adam (Kingma & Ba 2015) exactly as `torch.optim.Adam` computes it, BioTorch's optimizer.

        g' = g + d w                        (weight decay: L2 added to the gradient, as
        m = β1 m + (1 − β1) g'               PyTorch's and BioTorch's `weight_decay`;
        v = β2 v + (1 − β2) g'²              not AdamW's decoupled decay)
        w = w − η (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + ε)

    torch's own kernels do the arithmetic (for-each, or fused on a GPU), so results, state and
    checkpoints are torch's; this class adds asymbp's one-line errors. Like SGD above, a
    parameter without a gradient is skipped, and any param-group keys (`kind`) are kept.

    Arguments:
        params: parameters or param groups.
        lr: η (BioTorch: 1e-3).
        betas: (β1, β2) (BioTorch: (0.9, 0.999)).
        eps: ε.
        weight_decay: d (BioTorch: 1e-4).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        _check(lr, 0.0, weight_decay)
        b1, b2 = adam_betas(betas)
        if not eps >= 0:
            raise AsymbpError(f"Adam's eps must be >= 0, got {eps}")
        super().__init__(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)


UPDATE_RULES.register("SGD", (SGD, {}))
UPDATE_RULES.register("BM1", (BatchManhattan, {"setting": 1}), aliases=("BM",))
UPDATE_RULES.register("BM2", (BatchManhattan, {"setting": 2}))
UPDATE_RULES.register("BM3", (BatchManhattan, {"setting": 3}))
UPDATE_RULES.register("Adam", (Adam, {}))


def make_optimizer(update: str, params, lr: float, momentum: float = 0.9,
                   weight_decay: float = 5e-4, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8) -> Optimizer:
    """The optimizer of an update rule name (`SGD`, `BM` = `BM1`, `BM2`, `BM3`, `Adam`; any
    case). Each takes its own hyperparameters: momentum the paper's rules, betas and eps Adam."""
    cls, extra = UPDATE_RULES[update]
    if issubclass(cls, torch.optim.Adam):
        return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **extra)
    return cls(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **extra)
