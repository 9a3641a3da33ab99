"""The feedback schemes of DESIGN §2 that make V from W or from fixed draws, each beside its
citation: BP, uSF, NuSF, sSF, brSF, frSF, RndF, KP, PFA, PFA-o. (DFA is in dfa.py, WM in
mirror.py, each with its plumbing.)

Randomness. Each layer has its own seed (set by `asymbp.convert` from one model seed). Fixed draws
are made once from it when the scheme is built; redrawn schemes draw from a generator on `W`'s
device seeded from it, once per update of `W` (detected through `W`'s version counter, so every
backward between two optimizer steps sees the same draw, and data-parallel replicas that take the
same steps draw the same `V`). The generator's state is saved with `state_dict`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import AsymbpError
from ..rng import LayerGenerator, cpu_generator
from .base import (Feedback, check_choice, check_density, check_p, default_init, eager, fan_in,
                   fans, fsign, keep_mask, register, xavier_bound)

SPARSE_EXAMPLE = {"density": 0.3}  # the oracle tests' sparse variant of each sparse scheme


@register("BP")
class BP(Feedback):
    """Symmetric backprop: V = W. Through the asymmetric layers it equals plain autograd."""

    symmetric = True

    def V(self, W: Tensor) -> Tensor:
        return W


class _SparseSign(Feedback):
    """A sign scheme with the `density` option: V ∘ mask, the 0/1 mask a buffer drawn once."""

    sparse = True

    def __init__(self, W: Tensor, seed: int, density: float = 1.0):
        super().__init__(W, seed)
        self.density = check_density(density)
        mask = keep_mask(W.shape, self.density, seed)
        # None at density 1: no buffer, so a dense scheme's state_dict is what it always was
        self.register_buffer("mask", None if mask is None else mask.to(W))

    @classmethod
    def options(cls):
        return ("density",)

    def masked(self, V: Tensor) -> Tensor:
        return V if self.mask is None else V * self.mask


@register("uSF")
class UniformSignFeedback(_SparseSign):
    """Uniform sign-concordant feedback, V = c·sign(W), c = 1. Liao, Leibo & Poggio 2016.

    `scale="xavier"`: c = √(2/(fan_in + fan_out)), BioTorch's uSF (Sanfiz & Akrout 2021), the
    std of a Xavier initialisation; a number: that c.
    """

    examples = ({"scale": "xavier"}, SPARSE_EXAMPLE)

    def __init__(self, W: Tensor, seed: int, scale: float | str = 1.0, density: float = 1.0):
        super().__init__(W, seed, density)
        if scale == "xavier":
            fi, fo = fans(W)
            self.c = math.sqrt(2.0 / (fi + fo))
        elif isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
            self.c = float(scale)
        else:
            raise AsymbpError(f"uSF scale={scale!r} is neither a positive number nor 'xavier'; "
                              "give e.g. scale=xavier (BioTorch's c·sign(W)) or scale=1")
        self.scale = scale if scale == "xavier" else float(scale)

    @classmethod
    def options(cls):
        return ("scale", "density")

    def V(self, W: Tensor) -> Tensor:
        return self.masked(fsign(W, self.c))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, density={self.density}, seed={self.seed}"


@register("NuSF")
class NormalizedUniformSignFeedback(_SparseSign):
    """Normalised uniform sign-concordant feedback, V = sign(W) / fan_in. Liao et al. 2016."""

    examples = (SPARSE_EXAMPLE,)

    def V(self, W: Tensor) -> Tensor:
        return self.masked(fsign(W, 1.0 / fan_in(W)))


@register("sSF")
class ScaledSignFeedback(_SparseSign):
    """Scaled sign-concordant feedback, V = c·sign(W), c = std of the layer's initialisation.

    Moskovitz, Litwin-Kumar & Abbott 2018. `c` is measured on W when the scheme is attached
    (normally right after initialisation) and kept in a buffer.
    """

    examples = (SPARSE_EXAMPLE,)

    def __init__(self, W: Tensor, seed: int, density: float = 1.0):
        super().__init__(W, seed, density)
        self.register_buffer("c", W.detach().float().std().to(W.dtype).reshape(()))

    def V(self, W: Tensor) -> Tensor:
        return self.masked(fsign(W, self.c))


@register("brSF")
class BatchwiseRandomSignFeedback(_SparseSign):
    """Batchwise random magnitude sign-concordant feedback, V = M ∘ sign(W) ∘ S_p.

    M ~ U[0, 1] and S_p (−1 with probability p %, +1 otherwise) are redrawn after every update
    of W. p = 0 (`brSF`) is strict sign concordance; `brSF-25` flips 25 % of the signs.
    Liao, Leibo & Poggio 2016 (Experiment B, Part 1). The draws come from a per-layer
    generator on W's device, once per update of W. `magnitude="xavier"`: M ~ |U(−a, a)|,
    a = √(6/(fan_in + fan_out)), BioTorch's brSF (a times the U[0, 1] draw).
    """

    redrawn = True
    takes_p = True
    examples = ({"magnitude": "xavier"}, {"p": 25, "magnitude": "xavier", **SPARSE_EXAMPLE})

    def __init__(self, W: Tensor, seed: int, p: float = 0.0, magnitude: str = "uniform",
                 density: float = 1.0):
        super().__init__(W, seed, density)
        check_p(p)
        self.p = float(p)
        self.magnitude = check_choice("brSF", "magnitude", magnitude, MAGNITUDES)
        self.a = xavier_bound(W) if magnitude == "xavier" else 1.0
        self._rng = LayerGenerator((self.seed * 2654435761 + 1) % (2**63))
        self._drawn_version: tuple[int, int] | str | None = None  # "restored": from a checkpoint
        self._draw: Tensor | None = None

    @classmethod
    def options(cls):
        return ("p", "magnitude", "density")

    def draw(self, W: Tensor, gen: torch.Generator) -> Tensor:
        u = torch.rand(W.shape, generator=gen, device=W.device, dtype=W.dtype)
        q = self.p / 100.0
        if q == 0:
            return u  # M
        if q == 1:
            return -u  # M ∘ S_1
        # One uniform draw gives both: S_p = −1 when u < q, and M = |u − q| rescaled within its
        # side (by q or 1 − q), which is again uniform on [0, 1] and independent of S_p. Half the
        # random numbers of drawing M and S_p separately. As arithmetic, with a = u − q:
        # (a + min(a, 0)·(1 − 2q)/q) / (1 − q) is a/q below zero and a/(1 − q) above — a few
        # vectorised passes, where a select (torch.where) timed 4× the random draw itself.
        a = u.sub_(q)
        return a.add_(a.clamp_max(0.0), alpha=(1.0 - 2.0 * q) / q).mul_(1.0 / (1.0 - q))

    def V(self, W: Tensor) -> Tensor:
        return self.masked(self._current_draw(W) * fsign(W, self.a))

    @eager
    def _current_draw(self, W: Tensor) -> Tensor:
        # A new draw after every in-place update of W (optimizer step), never within a step.
        version = (id(W), W._version)
        if self._drawn_version == "restored" and self._draw is not None:
            # The draw saved with the state: it stays current until W's next update.
            self._draw = self._draw.to(device=W.device, dtype=W.dtype)
            self._drawn_version = version
        if self._draw is None or self._drawn_version != version or self._draw.device != W.device:
            self._draw = self.draw(W, self._rng.on(W.device))
            self._drawn_version = version
        return self._draw

    def get_extra_state(self):
        return {"generator": self._rng.get_state(), "draw": self._draw}

    def set_extra_state(self, state) -> None:
        state = state or {}
        self._rng.set_state(state.get("generator"))
        self._draw = state.get("draw")
        self._drawn_version = "restored"  # a resumed run continues with the same draws

    def extra_repr(self) -> str:
        return f"p={self.p}, magnitude={self.magnitude}, density={self.density}, seed={self.seed}"


MAGNITUDES = ("uniform", "xavier")  # brSF/frSF's M: U[0, 1], or |U(−a, a)| (BioTorch)


def _flip_signs(shape, p: float, generator: torch.Generator, device, dtype) -> Tensor:
    """S_p: −1 with probability p (in %), +1 otherwise."""
    u = torch.rand(shape, generator=generator, device=device)
    return torch.where(u < p / 100.0, -1.0, 1.0).to(dtype)


@register("frSF")
class FixedRandomSignFeedback(Feedback):
    """Fixed random magnitude sign-concordant feedback, V = M ∘ sign(W) ∘ S_p.

    M ~ U[0, 1] and S_p are drawn once and kept (buffers, saved with the model); the signs follow
    the current W. Liao, Leibo & Poggio 2016 (Experiment B, Part 2). `magnitude="xavier"`:
    M ~ |U(−a, a)|, a = √(6/(fan_in + fan_out)), BioTorch's frSF. `density`: the sparse mask is
    folded into the fixed M.
    """

    takes_p = True
    sparse = True
    examples = ({"magnitude": "xavier"}, {"p": 25, "magnitude": "xavier", **SPARSE_EXAMPLE})

    def __init__(self, W: Tensor, seed: int, p: float = 0.0, magnitude: str = "uniform",
                 density: float = 1.0):
        super().__init__(W, seed)
        check_p(p)
        self.p = float(p)
        self.magnitude = check_choice("frSF", "magnitude", magnitude, MAGNITUDES)
        self.density = check_density(density)
        gen = cpu_generator(seed)
        M = torch.rand(W.shape, generator=gen)
        if self.p > 0:
            M = M * _flip_signs(W.shape, self.p, gen, "cpu", M.dtype)
        if magnitude == "xavier":
            M = M * xavier_bound(W)  # a·U[0, 1] is |U(−a, a)|
        mask = keep_mask(W.shape, self.density, seed)
        if mask is not None:
            M = M * mask
        self.register_buffer("MS", M.to(device=W.device, dtype=W.dtype))  # M ∘ S_p ∘ mask

    @classmethod
    def options(cls):
        return ("p", "magnitude", "density")

    def V(self, W: Tensor) -> Tensor:
        return self.MS * fsign(W)

    def extra_repr(self) -> str:
        return f"p={self.p}, magnitude={self.magnitude}, density={self.density}, seed={self.seed}"


@register("RndF")
class RandomFeedback(Feedback):
    """Fixed random feedback (feedback alignment), V ~ N(0, σ²), σ = 0.05, independent of W.

    Lillicrap et al. 2016; Liao et al. 2016 (Experiment C). `init="xavier"`: V ~ U(−a, a),
    a = √(6/(fan_in + fan_out)), BioTorch's FA (σ unused). `density`: the sparse mask is folded
    into the fixed V.
    """

    sparse = True
    examples = ({"init": "xavier"}, {"init": "xavier", **SPARSE_EXAMPLE})

    def __init__(self, W: Tensor, seed: int, sigma: float = 0.05, init: str = "normal",
                 density: float = 1.0):
        super().__init__(W, seed)
        if not sigma > 0:
            raise AsymbpError(f"RndF sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.init = check_choice("RndF", "init", init, ("normal", "xavier"))
        self.density = check_density(density)
        gen = cpu_generator(seed)
        if init == "xavier":
            V = (torch.rand(W.shape, generator=gen) * 2 - 1) * xavier_bound(W)
        else:
            V = torch.randn(W.shape, generator=gen) * self.sigma
        mask = keep_mask(W.shape, self.density, seed)
        if mask is not None:
            V = V * mask
        self.register_buffer("weight", V.to(device=W.device, dtype=W.dtype))

    @classmethod
    def options(cls):
        return ("sigma", "init", "density")

    def V(self, W: Tensor) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, init={self.init}, density={self.density}, seed={self.seed}"


@register("KP")
class KolenPollack(Feedback):
    """Kolen–Pollack learned feedback: V is a parameter that receives W's gradient.

    With the same update and weight decay as W, ΔV = ΔW, so V − W decays by the weight decay
    and V → W. Kolen & Pollack 1994; Akrout et al. 2019. V starts as an independent draw from
    the layer's default initialisation.
    """

    learned = True

    def __init__(self, W: Tensor, seed: int):
        super().__init__(W, seed)
        V = default_init(W.shape, fan_in(W), cpu_generator(seed))
        self.weight = nn.Parameter(V.to(device=W.device, dtype=W.dtype))

    def V(self, W: Tensor) -> Tensor:
        return self.weight


@register("PFA")
class ProductFeedbackAlignment(Feedback):
    """Product Feedback Alignment, V = B·R. Li Ji-An & Benna 2024.

    B (N_out × αN_out) is fixed random with E[BBᵀ] = I (entries N(0, 1/(αN_out))), R
    (αN_out × N_in) is learned with ΔR = Bᵀ ΔW: the layer hands W's gradient to V, and autograd
    through V = B·R gives R the gradient Bᵀ g_W. For a conv layer B is a 1×1 kernel and R a k×k
    kernel; V is formed once per step, never by pushing activations through R. `density`: only
    that fraction of B's entries is kept (Li & Benna's sparse feedback), folded into B.
    """

    learned = True
    sparse = True
    examples = (SPARSE_EXAMPLE,)

    def __init__(self, W: Tensor, seed: int, alpha: float = 10, orthogonal: bool = False,
                 density: float = 1.0):
        super().__init__(W, seed)
        self.density = check_density(density)
        n_out = W.shape[0]
        hidden = int(round(alpha * n_out))
        if hidden < 1:
            raise AsymbpError(f"PFA alpha must give at least one hidden unit, got alpha={alpha}")
        self.alpha, self.orthogonal = float(alpha), bool(orthogonal)
        gen = cpu_generator(seed)
        if orthogonal:
            if hidden < n_out:
                raise AsymbpError("PFA with orthogonal B needs alpha >= 1")
            q, r = torch.linalg.qr(torch.randn(hidden, n_out, generator=gen))  # (αN, N), q: (αN, N)
            B = (q * torch.sign(torch.diagonal(r))).T  # (N, αN) with orthonormal rows: BBᵀ = I
        else:
            B = torch.randn(n_out, hidden, generator=gen) / math.sqrt(hidden)
        R = default_init((hidden, *W.shape[1:]), fan_in(W), gen)  # (αN_out, C_in, kh, kw)
        mask = keep_mask(B.shape, self.density, seed)
        if mask is not None:
            B = B * mask
        self.register_buffer("B", B.to(device=W.device, dtype=W.dtype))
        self.R = nn.Parameter(R.to(device=W.device, dtype=W.dtype))

    @classmethod
    def options(cls):
        return ("alpha", "orthogonal", "density")

    def V(self, W: Tensor) -> Tensor:
        # (N_out, αN) @ (αN, C_in·kh·kw) -> W's shape
        return (self.B @ self.R.flatten(1)).view(W.shape)

    def factored_backward(self, rows: int) -> bool:
        """A Linear layer skips forming V when that is cheaper (layers.PFALinearFunction)."""
        return self.R.dim() == 2 and self.factored_is_cheaper(rows)

    def factored_is_cheaper(self, rows: int) -> bool:
        """Multiply-adds of the factored backward vs forming V and Bᵀ g_W, for `rows` inputs."""
        n_out, hidden = self.B.shape
        n_in = self.R.shape[1]
        return rows * hidden * (n_out + 2 * n_in) < 2 * hidden * n_out * n_in + rows * n_out * n_in

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, orthogonal={self.orthogonal}, density={self.density}, "
                f"seed={self.seed}")


@register("PFA-o")
class OrthogonalProductFeedbackAlignment(ProductFeedbackAlignment):
    """PFA with α = 1 and an orthogonal B. Li Ji-An & Benna 2024."""

    def __init__(self, W: Tensor, seed: int, alpha: float = 1, orthogonal: bool = True,
                 density: float = 1.0):
        super().__init__(W, seed, alpha=alpha, orthogonal=orthogonal, density=density)
