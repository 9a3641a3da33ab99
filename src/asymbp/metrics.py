"""How well the feedback lines up with backprop.

`layer_alignment(model)`: per asymmetric layer, the angle in degrees between V and W, the
fraction of feedback signs that agree with W's, and ‖V‖/‖W‖. For PFA, V = B·R, so these are Li &
Benna's (2024) own measures: the path alignment (the angle between W and B·R) and ‖B·R‖/‖W‖.

`error_signal_alignment(model, x, y)`: for one batch, per layer, the angle between the error
signal the layer receives (dE/dy at its output) under the model's feedback and under true
backprop.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .feedback import BP
from .layers import asym_layers


def angle(a: Tensor, b: Tensor) -> float:
    """The angle in degrees between two tensors taken as vectors (90 when either is zero)."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 90.0
    cos = torch.clamp((a @ b) / (na * nb), -1.0, 1.0)
    return math.degrees(math.acos(cos.item()))


@torch.no_grad()
def layer_alignment(model: nn.Module) -> list[dict]:
    """[{layer, scheme, angle, sign_concordance, norm_ratio}] for every asymmetric layer."""
    rows = []
    for name, layer in asym_layers(model):
        W = layer.weight.detach()
        V = layer.feedback_weight()
        wn = W.norm().item()
        if layer.feedback.direct and not V.any():
            # DFA's hidden layers: dE/dx is B e, not Vᵀ g; there is no V to compare with W
            rows.append({"layer": name, "scheme": layer.scheme, "angle": math.nan,
                         "sign_concordance": math.nan, "norm_ratio": math.nan})
            continue
        rows.append({
            "layer": name,
            "scheme": layer.scheme,
            "angle": angle(V, W),
            "sign_concordance": ((V >= 0) == (W >= 0)).double().mean().item(),
            "norm_ratio": V.norm().item() / wn if wn > 0 else math.nan,
        })
    return rows


@contextlib.contextmanager
def symmetric(model: nn.Module):
    """Temporarily give every asymmetric layer V = W (true backprop); the schemes come back."""
    with contextlib.ExitStack() as stack:
        for _, layer in asym_layers(model):
            stack.enter_context(layer.feedback_swapped(BP(layer.weight, 0)))
        yield model


def _error_signals(model: nn.Module, x: Tensor, y: Tensor, loss_fn) -> dict[str, Tensor]:
    layers = asym_layers(model)
    grads: dict[str, Tensor] = {}
    handles = []

    def hook(name):
        def fwd(module, inputs, output):
            if output.requires_grad:
                output.register_hook(lambda g: grads.__setitem__(name, g.detach().clone()))
        return fwd

    for name, layer in layers:
        handles.append(layer.register_forward_hook(hook(name)))
    try:
        with torch.enable_grad():
            out = model(x)
            loss = loss_fn(out, y)
            # Gradients with respect to the inputs of nothing: only the error signals are wanted.
            params = [p for p in model.parameters() if p.requires_grad]
            torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return grads


def error_signal_alignment(model: nn.Module, x: Tensor, y: Tensor, loss_fn=None) -> list[dict]:
    """[{layer, grad_angle}]: angle between each layer's asymmetric and true error signals.

    Runs one forward/backward with the model's feedback and one with V = W on the same batch
    (BN in its current mode: call `model.eval()` first for frozen statistics). No parameter's
    `.grad` is touched.
    """
    loss_fn = loss_fn or (lambda out, t: F.cross_entropy(out, t, reduction="sum"))
    rng = torch.random.get_rng_state()
    asym = _error_signals(model, x, y, loss_fn)
    torch.random.set_rng_state(rng)  # the same dropout masks, if any
    with symmetric(model):
        true = _error_signals(model, x, y, loss_fn)
    return [{"layer": name, "grad_angle": angle(asym[name], true[name])}
            for name, _ in asym_layers(model) if name in asym and name in true]
