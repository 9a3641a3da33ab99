"""Asymmetric Linear and Conv2d layers (DESIGN §1).

The forward pass is the ordinary one with `W`. The backward pass gives the exact, local weight
and bias gradients and sends the error to the input through the feedback weights `V`:

    dE/dW = g xᵀ        dE/db = Σ g        dE/dx = Vᵀ g   (conv: transposed conv with kernel V)

Each rule sits in an autograd Function right next to its forward and uses the fused aten
kernels (`mm`, `convolution_backward`). `dE/dx` is computed only when the input needs it.
Learned feedback (KP, PFA) receives W's gradient as the gradient of `V`; autograd carries it to
the scheme's own parameters (PFA: `R` gets `Bᵀ g_W`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from . import feedback as fb
from .errors import AsymbpError


def _new_seed() -> int:
    # A layer made directly (not through `convert`) takes its seed from torch's global RNG, so
    # `torch.manual_seed` makes it reproducible.
    return int(torch.randint(0, 2**62, (1,)).item())


class AsymLinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b forward; dE/dx = g V backward."""

    @staticmethod
    def forward(x: Tensor, W: Tensor, b: Tensor | None, V: Tensor) -> Tensor:
        return F.linear(x, W, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, b, V = inputs
        need_x, need_W, _, need_V = ctx.needs_input_grad
        ctx.x_dtype, ctx.w_dtype = x.dtype, W.dtype
        ctx.save_for_backward(
            x if (need_W or need_V) else None,
            V if need_x else None,
        )

    @staticmethod
    def backward(ctx, g: Tensor):
        x, V = ctx.saved_tensors
        need_x, need_W, need_b, need_V = ctx.needs_input_grad
        gx = gW = gb = gV = None
        # Under autocast g may be bf16 while x and V are fp32: compute in g's dtype, return
        # each gradient in its input's dtype.
        if need_x:
            gx = (g @ V.to(g.dtype)).to(ctx.x_dtype)  # (..., out) @ (out, in) -> (..., in)
        if need_W or need_V or need_b:
            g2 = g.reshape(-1, g.shape[-1])  # (N, out)
            if need_W or need_V:
                gW = (g2.T @ x.reshape(-1, x.shape[-1]).to(g.dtype)).to(ctx.w_dtype)  # (out, in)
            if need_b:
                gb = g2.sum(0)
        if need_V:
            gV = gW.clone()  # learned feedback gets W's gradient: ΔV = ΔW
        return gx, gW if need_W else None, gb, gV


class PFALinearFunction(torch.autograd.Function):
    """PFA for a Linear layer with V = B·R never formed: dE/dx = (g B) R, dE/dR = (g B)ᵀ x.

    The same gradients as `AsymLinearFunction` with V = B·R (autograd gives R the gradient
    Bᵀ g_W = Bᵀ gᵀ x = (g B)ᵀ x), at a cost of M·αN·(N_out + 2·N_in) multiply-adds instead of
    2·αN·N_out·N_in for forming V and Bᵀ g_W: cheaper whenever the batch M is small next to
    N_out (the paper's fc layers).
    """

    @staticmethod
    def forward(x: Tensor, W: Tensor, b: Tensor | None, B: Tensor, R: Tensor) -> Tensor:
        return F.linear(x, W, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, b, B, R = inputs
        ctx.x_dtype, ctx.w_dtype = x.dtype, W.dtype
        ctx.save_for_backward(x, B, R)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, B, R = ctx.saved_tensors
        need_x, need_W, need_b, _, need_R = ctx.needs_input_grad
        dt = g.dtype
        g2 = g.reshape(-1, g.shape[-1])  # (M, N_out)
        x2 = x.reshape(-1, x.shape[-1]).to(dt)  # (M, N_in)
        gx = gW = gb = gR = None
        h = g2 @ B.to(dt) if (need_x or need_R) else None  # (M, αN)
        if need_x:
            gx = (h @ R.to(dt)).reshape(*g.shape[:-1], R.shape[-1]).to(ctx.x_dtype)
        if need_W:
            gW = (g2.T @ x2).to(ctx.w_dtype)
        if need_b:
            gb = g2.sum(0)
        if need_R:
            gR = (h.T @ x2).to(ctx.w_dtype)  # (αN, N_in) = Bᵀ g_W
        return gx, gW, gb, None, gR


class AsymConv2dFunction(torch.autograd.Function):
    """y = conv2d(x, W) + b forward; dE/dx = conv_transpose2d(g, V) backward."""

    @staticmethod
    def forward(x, W, b, V, stride, padding, dilation, groups):
        return F.conv2d(x, W, b, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, b, V, stride, padding, dilation, groups = inputs
        ctx.conv = (stride, padding, dilation, groups)
        ctx.has_bias = b is not None
        ctx.x_dtype, ctx.w_dtype = x.dtype, W.dtype
        ctx.W_shape = W.shape
        ctx.save_for_backward(x, V)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, V = ctx.saved_tensors
        need_x, need_W, need_b, need_V = ctx.needs_input_grad[:4]
        stride, padding, dilation, groups = ctx.conv
        dt = g.dtype
        gx, gW, gb = torch.ops.aten.convolution_backward(
            g,
            x.to(dt),
            V.to(dt),  # the kernel of the transposed convolution: the only change from BP
            [V.shape[0]] if ctx.has_bias else None,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [need_x, need_W or need_V, need_b],
        )
        if gx is not None:
            gx = gx.to(ctx.x_dtype)
        if gW is not None:
            gW = gW.to(ctx.w_dtype)
        gV = gW.clone() if need_V else None
        return gx, gW if need_W else None, gb, gV, None, None, None, None


class _Asym:
    """What AsymLinear and AsymConv2d share: the feedback scheme and the weight-norm constraint."""

    feedback: fb.Feedback

    def _init_feedback(self, scheme: str, seed: int | None, weight_norm: bool, options: dict):
        self.set_scheme(scheme, seed=seed, **options)
        self.weight_norm = bool(weight_norm)
        # ‖W₀‖ for the Moskovitz et al. 2018 norm constraint (+WN); a buffer so it is saved.
        self.register_buffer("w0_norm", self.weight.detach().norm().reshape(()).clone())

    def set_scheme(self, scheme: str, seed: int | None = None, **options) -> None:
        """(Re)build the feedback scheme from the current weights (by default, with its seed)."""
        if seed is None:
            seed = self.feedback.seed if "feedback" in self._modules else _new_seed()
        with torch.no_grad():
            self.feedback = fb.make(scheme, self.weight.detach(), seed, **options)

    @contextlib.contextmanager
    def feedback_swapped(self, feedback: fb.Feedback):
        """Inside the block the layer uses `feedback` instead of its own scheme, which then comes
        back untouched (even after an error); e.g. `metrics.symmetric`'s V = W."""
        own = self.feedback
        self.feedback = feedback
        try:
            yield self
        finally:
            self.feedback = own

    @property
    def scheme(self) -> str:
        return self.feedback.name

    def _V_for_backward(self) -> Tensor:
        V = self.feedback.V(self.weight)
        # Only learned feedback (KP, PFA) takes a gradient through V; for the others V is a
        # function of W that must not route a second gradient into W.
        return V if self.feedback.learned else V.detach()

    def feedback_weight(self) -> Tensor:
        """The V of the current step (the one the next backward uses), in W's shape."""
        with torch.no_grad():
            return self.feedback.V(self.weight).detach()

    @torch.no_grad()
    def renormalize_(self) -> None:
        """W ← W·‖W₀‖/‖W‖ (the +WN constraint); called after each optimizer step."""
        norm = self.weight.norm()
        # No `if norm > 0` on the host: that would synchronise with the device every step.
        self.weight.mul_(torch.where(norm > 0, self.w0_norm / norm, torch.ones_like(norm)))


class AsymLinear(_Asym, nn.Linear):
    """`nn.Linear` whose backward sends the error through feedback weights V (DESIGN §1).

    Arguments:
        in_features, out_features, bias, device, dtype: as `nn.Linear` (same parameters, same init).
        scheme: a feedback scheme name (`asymbp.feedback.scheme_names()`), e.g. "uSF", "brSF-25".
        seed: the layer's seed for its feedback draws (default: drawn from torch's global RNG).
        weight_norm: keep ‖W‖ at its initial value after each step (`+WN`).
        **scheme_options: options of the scheme, e.g. `p=25` (brSF/frSF), `sigma` (RndF), `alpha` (PFA).
    """

    def __init__(self, in_features, out_features, bias=True, scheme="BP", *, seed=None,
                 weight_norm=False, device=None, dtype=None, **scheme_options):
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_feedback(scheme, seed, weight_norm, scheme_options)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        f = self.feedback
        if f.direct:  # DFA: x's gradient is the output error (feedback/dfa.py)
            y = AsymLinearFunction.apply(x.detach(), self.weight, self.bias,
                                         self._V_for_backward())
            return f.attach(y, x, conv=False)
        if f.factored_backward(x.numel() // x.shape[-1]):  # PFA: V = B·R never formed
            return PFALinearFunction.apply(x, self.weight, self.bias, f.B, f.R)
        return AsymLinearFunction.apply(x, self.weight, self.bias, self._V_for_backward())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scheme={self.scheme}"


class AsymConv2d(_Asym, nn.Conv2d):
    """`nn.Conv2d` whose backward sends the error through feedback kernels V (DESIGN §1).

    Arguments: those of `nn.Conv2d` (stride, padding — ints, tuples, 'same', 'valid' — dilation,
    groups, bias, padding_mode), plus `scheme`, `seed`, `weight_norm` and scheme options as
    `AsymLinear`.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", scheme="BP", *, seed=None,
                 weight_norm=False, device=None, dtype=None, **scheme_options):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias, padding_mode, device=device, dtype=dtype)
        self._init_feedback(scheme, seed, weight_norm, scheme_options)

    def _explicit_padding(self) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
        """(padding passed to the conv, extra F.pad before it or None) for any padding form."""
        if self.padding_mode != "zeros":
            return (0, 0), self._reversed_padding_repeated_twice
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return (0, 0), None
            # 'same': total padding d·(k−1) per dimension, the extra pixel on the right/bottom
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if all(t % 2 == 0 for t in total):
                return (total[0] // 2, total[1] // 2), None
            left = [t // 2 for t in total]
            return (0, 0), (left[1], total[1] - left[1], left[0], total[0] - left[0])
        return _pair(self.padding), None

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return self._conv_forward(x, self.weight, self.bias)
        padding, pre = self._explicit_padding()
        x_in = x
        if self.feedback.direct:  # DFA: x's gradient is the output error (feedback/dfa.py)
            x = x.detach()
        if pre is not None:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, pre, mode=mode)
        y = AsymConv2dFunction.apply(
            x, self.weight, self.bias, self._V_for_backward(),
            _pair(self.stride), padding, _pair(self.dilation), self.groups,
        )
        return self.feedback.attach(y, x_in, conv=True) if self.feedback.direct else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scheme={self.scheme}"


ASYM_LAYERS = (AsymLinear, AsymConv2d)


def asym_layers(model: nn.Module):
    """(name, layer) for every asymmetric layer of `model`, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ASYM_LAYERS)]


@torch.no_grad()
def renormalize(model: nn.Module) -> None:
    """Apply the +WN norm constraint to every asymmetric layer that has it switched on."""
    for _, layer in asym_layers(model):
        if layer.weight_norm:
            layer.renormalize_()


def check_layer(module: nn.Module) -> None:
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise AsymbpError(
            f"cannot make {type(module).__name__} asymmetric; valid layer types: Linear, Conv2d"
        )
