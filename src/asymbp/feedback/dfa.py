"""Direct Feedback Alignment (`DFA`): Nøkland 2016, "Direct feedback alignment provides learning
in deep neural networks" (NeurIPS 2016).

Every asymmetric layer's input gradient is replaced by the network's *output* error
e = dE/d(output) (the logits' gradient) sent through the layer's own fixed random matrix B:

    dE/dx = B e            B: (in_features, C)   e: (N, C)   ->   (N, in_features)
    conv: dE/dx[n, c, h, w] = (B e)[n, c] / (H·W)  at every position (h, w)   (B: (C_in, C))

(the 1/(H·W) is the `spatial="mean"` default: the adjoint of a global average pool, which keeps
the conv layers' weight gradients at BP's scale; `spatial="sum"` broadcasts B e unscaled.)

Autograd then carries B e through the ReLU / pooling / BN below to the layer that produced x, so
each hidden layer receives the output error through its own fixed random matrix, as in Nøkland's
DFA (the B of layer l here is Nøkland's B of the layer below it, the one whose output is x).
Weight and bias gradients stay exact and local (dE/dW = g xᵀ with the g that arrives); the
classifier's g is e itself, so it learns as in BP. C is the number of classes.

How e reaches every layer. `asymbp.convert(model, "DFA")` puts a forward pre-hook and a forward
hook on the root model (`DirectFeedbackAlignment.prepare_model`). Each forward of the model opens
a fresh `_Slot`; every DFA layer that runs inside it keeps a reference to the slot; the root's
forward hook registers a tensor hook on the output that stores e in the slot. That hook runs
first in the backward, before any layer's, so each layer reads the e of its own forward (several
forwards before one backward are fine). The model must return its logits as one tensor.

A DFA layer used on its own (`AsymLinear(..., scheme="DFA")`, no converted root around it) is
its own output layer: e = g (a conv's g summed over positions, the adjoint of the broadcast),
C defaults to out_features / out_channels, and a Linear's feedback is then exactly random
feedback with V = Bᵀ.

`feedback_weight()` returns Bᵀ when it has W's shape (the classifier of a converted model, or a
lone Linear): then dE/dx = Vᵀ g with V = Bᵀ holds exactly. Elsewhere there is no V in W's shape
(the input error does not come from g) and it returns zeros; `DFA.direct = True` marks the
scheme so generic Vᵀg oracle tests skip it and `metrics.layer_alignment` reports NaN angles.
Grouped convolutions are not supported (B needs the full input channel count).
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor, nn

from ..errors import AsymbpError
from ..rng import cpu_generator
from .base import Feedback, check_density, eager, install_model_hooks, keep_mask, register


class _Slot:
    """The output error of one forward of a converted model, filled early in its backward."""

    __slots__ = ("e",)

    def __init__(self):
        self.e: Tensor | None = None


_active = threading.local()  # stack of open slots (one per model forward in progress)


def _open_slots() -> list[_Slot]:
    if not hasattr(_active, "stack"):
        _active.stack = []
    return _active.stack


@eager
def _root_pre_hook(module, args):
    _open_slots().append(_Slot())


@eager
def _root_hook(module, args, output):
    slots = _open_slots()
    slot = slots.pop() if slots else None
    if slot is None or not torch.is_grad_enabled():
        return
    if not isinstance(output, Tensor):
        raise AsymbpError(f"DFA needs the model to return its logits as one tensor, got "
                          f"{type(output).__name__}")
    if output.requires_grad:
        def store(g: Tensor) -> None:
            slot.e = g.detach().reshape(g.shape[0], -1) if g.dim() != 2 else g.detach()  # (N, C)
        output.register_hook(store)


def infer_num_classes(model: nn.Module) -> int:
    """The model's output size: the last Linear's out_features (else the last Conv2d's channels)."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m.out_features
    if last is None:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                last = m.out_channels
    if last is None:
        raise AsymbpError("DFA found no Linear or Conv2d layer to infer the number of classes "
                          "from; pass num_classes=")
    return int(last)


def project(e: Tensor, B: Tensor, x_shape: torch.Size, conv: bool, spatial: str = "mean"
            ) -> Tensor:
    """B e broadcast to the layer input's shape: (N, C) -> (N, in) -> x_shape.

    For a conv input the same error goes to every position, divided by H·W when `spatial` is
    "mean" (the adjoint of a global average pool), as is when "sum".
    """
    p = e.to(B.dtype) @ B.T  # (N, C) @ (C, in) -> (N, in)
    if conv:  # (N, C_in) -> (N, C_in, H, W)
        if spatial == "mean":
            p = p / (x_shape[2] * x_shape[3])
        return p[:, :, None, None].expand(x_shape)
    if len(x_shape) == 2:
        return p
    return p.view(p.shape[0], *([1] * (len(x_shape) - 2)), p.shape[1]).expand(x_shape)


class _DirectFeedbackFunction(torch.autograd.Function):
    """Identity on the layer output y; the layer input x receives B e instead of Vᵀ g."""

    @staticmethod
    def forward(ctx, y, x, B, slot, conv, spatial):
        ctx.save_for_backward(B)
        ctx.slot, ctx.conv, ctx.spatial = slot, conv, spatial
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        (B,) = ctx.saved_tensors
        if ctx.slot is None:  # a lone layer: it is its own output layer
            e = g.sum((2, 3)) if ctx.conv else g
            if not ctx.conv:
                return g, (g.to(B.dtype) @ B.T).to(ctx.x_dtype), None, None, None, None
        else:
            e = ctx.slot.e
            if e is None:
                raise AsymbpError("DFA: this backward did not start at the model output, so no "
                                  "output error was captured; call backward on a loss of the "
                                  "converted model's output")
        if e.shape[-1] != B.shape[1]:
            raise AsymbpError(f"DFA drew B for num_classes={B.shape[1]} but the output error has "
                              f"{e.shape[-1]}; convert with num_classes={e.shape[-1]}")
        if e.shape[0] != ctx.x_shape[0]:
            raise AsymbpError(f"DFA: the output error has batch {e.shape[0]} but the layer input "
                              f"has {ctx.x_shape[0]}; DFA needs one output row per input example")
        gx = project(e, B, ctx.x_shape, ctx.conv, ctx.spatial)
        return g, gx.to(ctx.x_dtype), None, None, None, None


@register("DFA")
class DirectFeedbackAlignment(Feedback):
    """Direct feedback alignment: dE/dx = B e, e the output error, B fixed random. Nøkland 2016.

    B (n_in, C), n_in = in_features or C_in, ~ U(−1/√n_in, 1/√n_in) · scale (the scale of a
    freshly initialised classifier's Wᵀ, so B e starts as large as BP's error), drawn once from
    the layer's seed and kept in a buffer.

    Options: `num_classes` C (given by `convert`: the model's output size; alone: the layer's
    out_features), `scale` (1.0), `spatial` ("mean": a conv input receives B e / (H·W) at every
    position, the adjoint of a global average pool; "sum": B e itself at every position — at
    lr multiplier 1 it diverges on the mnist net). The plumbing is above, in this module.
    """

    direct = True
    sparse = True  # `density`: that fraction of B's entries kept, the rest zero
    examples = ({"density": 0.3},)

    def __init__(self, W: Tensor, seed: int, num_classes: int | None = None, scale: float = 1.0,
                 spatial: str = "mean", density: float = 1.0):
        super().__init__(W, seed)
        C = int(num_classes) if num_classes is not None else W.shape[0]
        if C < 1:
            raise AsymbpError(f"DFA num_classes must be >= 1, got {num_classes}")
        if spatial not in ("mean", "sum"):
            raise AsymbpError(f"unknown DFA spatial mode {spatial!r}; valid: mean, sum")
        self.num_classes, self.scale, self.spatial = C, float(scale), spatial
        self.density = check_density(density)
        n_in = W.shape[1]  # in_features, or C_in (groups = 1)
        B = (torch.rand(n_in, C, generator=cpu_generator(seed)) * 2 - 1) * (scale / math.sqrt(n_in))
        mask = keep_mask(B.shape, self.density, seed)
        if mask is not None:
            B = B * mask
        self.register_buffer("B", B.to(device=W.device, dtype=W.dtype))  # (in, C)

    @classmethod
    def options(cls):
        return ("num_classes", "scale", "spatial", "density")

    @classmethod
    def prepare_model(cls, model: nn.Module, options: dict) -> dict:
        """Every layer projects the model's output error (C = the output size, unless given),
        which hooks on the root model capture at the start of each backward."""
        if options.get("num_classes") is None:
            options = {**options, "num_classes": infer_num_classes(model)}
        install_model_hooks(model, _root_pre_hook, _root_hook)
        return options

    def V(self, W: Tensor) -> Tensor:
        if W.shape == self.B.T.shape:
            return self.B.T  # the classifier (or a lone Linear): dE/dx = Vᵀ g with V = Bᵀ
        return torch.zeros_like(W)  # no error reaches x through g

    @eager
    def attach(self, y: Tensor, x: Tensor, conv: bool) -> Tensor:
        """y, with x's gradient replaced by B e. The layer's forward calls it with its own
        Function fed a detached x, so no Vᵀ g is computed."""
        if not x.requires_grad:
            return y
        if conv and x.shape[1] != self.B.shape[0]:
            raise AsymbpError("DFA does not support grouped convolutions; exclude the layer")
        slots = _open_slots()
        return _DirectFeedbackFunction.apply(y, x, self.B, slots[-1] if slots else None, conv,
                                             self.spatial)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, scale={self.scale}, spatial={self.spatial}, "
                f"density={self.density}, seed={self.seed}")
