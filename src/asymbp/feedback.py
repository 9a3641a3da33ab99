"""Feedback schemes: how the feedback weights `V` are made (DESIGN §2).

A scheme is a small `nn.Module` that lives on its layer as `layer.feedback`. It holds whatever
state `V` is made from — fixed random draws in buffers (saved with `state_dict`), learned feedback
as `nn.Parameter`s (updated by any optimizer) — and `V(W)` returns the feedback weights for the
current step, in `W`'s shape.

Every scheme is registered by the name used in method strings; lookups are case-insensitive, and
`brSF-25` / `frSF-50` mean `brSF` / `frSF` with sign-flip probability p = 25 % / 50 %.

Randomness. Each layer has its own seed (set by `asymbp.convert` from one model seed). Fixed draws
are made once from it when the scheme is built; redrawn schemes draw from a generator on `W`'s
device seeded from it, once per update of `W` (detected through `W`'s version counter, so every
backward between two optimizer steps sees the same draw, and data-parallel replicas that take the
same steps draw the same `V`). The generator's state is saved with `state_dict`.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn

from .errors import AsymbpError, unknown

# name (lower case) -> scheme class
SCHEMES: dict[str, type["Feedback"]] = {}


def register(name: str):
    """Class decorator: register a feedback scheme under `name` (case-insensitive)."""

    def deco(cls: type[Feedback]) -> type[Feedback]:
        cls.name = name
        SCHEMES[name.lower()] = cls
        return cls

    return deco


def scheme_names() -> list[str]:
    """The registered scheme names, as printed in method strings."""
    return [cls.name for cls in SCHEMES.values()]


_FLIP_SUFFIX = re.compile(r"^(?P<base>[a-z]+)-(?P<p>\d+(?:\.\d+)?)$")


def resolve(name: str) -> tuple[type["Feedback"], dict]:
    """Scheme class and implied options for a name such as `uSF`, `brSF-25`, `PFA-o`.

    Raises `AsymbpError` listing the valid names when `name` is unknown, or when the flip
    probability p of `brSF-p` / `frSF-p` is outside 0–100.
    """
    key = name.strip().lower()
    if key in SCHEMES:
        return SCHEMES[key], {}
    m = _FLIP_SUFFIX.match(key)
    if m and m["base"] in SCHEMES and getattr(SCHEMES[m["base"]], "takes_p", False):
        p = float(m["p"])
        check_p(p)
        return SCHEMES[m["base"]], {"p": p}
    valid = scheme_names() + ["brSF-p", "frSF-p (p = 0..100)"]
    raise unknown("feedback scheme", name, valid)


def check_p(p: float) -> None:
    if not (0.0 <= float(p) <= 100.0) or math.isnan(float(p)):
        raise AsymbpError(
            f"flip probability p={p} is outside 0-100; give the percentage of feedback signs "
            "that disagree with W, e.g. brSF-25"
        )


def make(name: str, W: Tensor, seed: int, **options) -> "Feedback":
    """Build the feedback scheme `name` for forward weights `W` (a Linear or Conv2d weight)."""
    cls, implied = resolve(name)
    opts = {**implied, **options}
    accepted = cls.options()
    bad = sorted(set(opts) - set(accepted))
    if bad:
        valid = ", ".join(accepted) or "none"
        raise AsymbpError(f"scheme {cls.name} takes no option {', '.join(bad)}; its options: {valid}")
    return cls(W, seed, **opts)


def fsign(W: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """scale·sign(W) for feedback: ±scale, a zero weight counts as +1 (DESIGN §2).

    One copysign pass (a select, `torch.where(W < 0, -s, s)`, timed 16× slower in isolation on
    the CPU, though whole training epochs barely noticed). `W + 0.0` turns a −0.0 weight into
    +0.0, so that it too counts as +1.
    """
    # A float scale is made on W's device: a CPU scalar would be a host-to-device copy in every
    # backward on a GPU (and break CUDA-graph capture).
    s = scale.to(W.dtype) if isinstance(scale, Tensor) else W.new_full((), float(scale))
    return torch.copysign(s, W + 0.0)


def fan_in(W: Tensor) -> int:
    """in_features (Linear) or kh·kw·C_in/groups (Conv2d)."""
    return W[0].numel()


def _cpu_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) % (2**63))
    return g


def _flip_signs(shape, p: float, generator: torch.Generator, device, dtype) -> Tensor:
    """S_p: −1 with probability p (in %), +1 otherwise."""
    u = torch.rand(shape, generator=generator, device=device)
    return torch.where(u < p / 100.0, -1.0, 1.0).to(dtype)


class Feedback(nn.Module):
    """Base of every scheme. Subclasses set `name` (by `register`) and implement `V(W)`."""

    name = "?"
    learned = False  # V has nn.Parameters that the optimizer trains (gradient: DESIGN §2)
    redrawn = False  # V has random parts drawn afresh after every update of W
    symmetric = False  # V is W itself (BP)
    # dE/dx is the output error through a fixed matrix (DFA), not Vᵀ g: V(W) is only a stand-in
    direct = False

    def __init__(self, W: Tensor, seed: int):
        super().__init__()
        self.seed = int(seed)

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The keyword options this scheme accepts."""
        return ()

    def V(self, W: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"seed={self.seed}"


@register("BP")
class BP(Feedback):
    """Symmetric backprop: V = W. Through the asymmetric layers it equals plain autograd."""

    symmetric = True

    def V(self, W: Tensor) -> Tensor:
        return W


@register("uSF")
class UniformSignFeedback(Feedback):
    """Uniform sign-concordant feedback, V = sign(W). Liao, Leibo & Poggio 2016."""

    def V(self, W: Tensor) -> Tensor:
        return fsign(W)


@register("NuSF")
class NormalizedUniformSignFeedback(Feedback):
    """Normalised uniform sign-concordant feedback, V = sign(W) / fan_in. Liao et al. 2016."""

    def V(self, W: Tensor) -> Tensor:
        return fsign(W, 1.0 / fan_in(W))


@register("sSF")
class ScaledSignFeedback(Feedback):
    """Scaled sign-concordant feedback, V = c·sign(W), c = std of the layer's initialisation.

    Moskovitz, Litwin-Kumar & Abbott 2018. `c` is measured on W when the scheme is attached
    (normally right after initialisation) and kept in a buffer.
    """

    def __init__(self, W: Tensor, seed: int):
        super().__init__(W, seed)
        self.register_buffer("c", W.detach().float().std().to(W.dtype).reshape(()))

    def V(self, W: Tensor) -> Tensor:
        return fsign(W, self.c)


def _device_generator(owner, device, seed: int) -> torch.Generator:
    """`owner._gen` on `device`, made on first use from `seed`, or from the state restored by
    `load_state_dict` (`owner._gen_state`), which it then consumes."""
    gen = owner._gen
    if gen is None or gen.device != torch.device(device):
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        if owner._gen_state is not None:
            gen.set_state(owner._gen_state)
            owner._gen_state = None
        owner._gen = gen
    return gen


class _RedrawnMixin:
    """Draws once per update of W, from a per-layer generator on W's device."""

    redrawn = True

    def _init_redraw(self, seed: int) -> None:
        self._gen: torch.Generator | None = None
        self._gen_state: Tensor | None = None  # restored state, applied when the generator is made
        self._drawn_version: tuple[int, int] | None = None
        self._draw: Tensor | None = None

    def _generator(self, device: torch.device) -> torch.Generator:
        return _device_generator(self, device, (self.seed * 2654435761 + 1) % (2**63))

    @torch.compiler.disable
    def _current_draw(self, W: Tensor) -> Tensor:
        # A new draw after every in-place update of W (optimizer step), never within a step.
        version = (id(W), W._version)
        if self._drawn_version == "restored" and self._draw is not None:
            # The draw saved with the state: it stays current until W's next update.
            self._draw = self._draw.to(device=W.device, dtype=W.dtype)
            self._drawn_version = version
        if self._draw is None or self._drawn_version != version or self._draw.device != W.device:
            self._draw = self.draw(W, self._generator(W.device))
            self._drawn_version = version
        return self._draw

    def get_extra_state(self):
        state = self._gen.get_state() if self._gen is not None else self._gen_state
        return {"generator": state, "draw": self._draw}

    def set_extra_state(self, state) -> None:
        state = state or {}
        self._gen_state = state.get("generator")
        self._gen = None
        self._draw = state.get("draw")
        self._drawn_version = "restored"  # a resumed run continues with the same draws


@register("brSF")
class BatchwiseRandomSignFeedback(_RedrawnMixin, Feedback):
    """Batchwise random magnitude sign-concordant feedback, V = M ∘ sign(W) ∘ S_p.

    M ~ U[0, 1] and S_p (−1 with probability p %, +1 otherwise) are redrawn after every update
    of W. p = 0 (`brSF`) is strict sign concordance; `brSF-25` flips 25 % of the signs.
    Liao, Leibo & Poggio 2016 (Experiment B, Part 1).
    """

    takes_p = True

    def __init__(self, W: Tensor, seed: int, p: float = 0.0):
        super().__init__(W, seed)
        check_p(p)
        self.p = float(p)
        self._init_redraw(seed)

    @classmethod
    def options(cls):
        return ("p",)

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
        return self._current_draw(W) * fsign(W)

    def extra_repr(self) -> str:
        return f"p={self.p}, seed={self.seed}"


@register("frSF")
class FixedRandomSignFeedback(Feedback):
    """Fixed random magnitude sign-concordant feedback, V = M ∘ sign(W) ∘ S_p.

    M ~ U[0, 1] and S_p are drawn once and kept (buffers, saved with the model); the signs follow
    the current W. Liao, Leibo & Poggio 2016 (Experiment B, Part 2).
    """

    takes_p = True

    def __init__(self, W: Tensor, seed: int, p: float = 0.0):
        super().__init__(W, seed)
        check_p(p)
        self.p = float(p)
        gen = _cpu_generator(seed)
        M = torch.rand(W.shape, generator=gen)
        if self.p > 0:
            M = M * _flip_signs(W.shape, self.p, gen, "cpu", M.dtype)
        self.register_buffer("MS", M.to(device=W.device, dtype=W.dtype))  # M ∘ S_p

    @classmethod
    def options(cls):
        return ("p",)

    def V(self, W: Tensor) -> Tensor:
        return self.MS * fsign(W)

    def extra_repr(self) -> str:
        return f"p={self.p}, seed={self.seed}"


@register("RndF")
class RandomFeedback(Feedback):
    """Fixed random feedback (feedback alignment), V ~ N(0, σ²), σ = 0.05, independent of W.

    Lillicrap et al. 2016; Liao et al. 2016 (Experiment C).
    """

    def __init__(self, W: Tensor, seed: int, sigma: float = 0.05):
        super().__init__(W, seed)
        if not sigma > 0:
            raise AsymbpError(f"RndF sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        V = torch.randn(W.shape, generator=_cpu_generator(seed)) * self.sigma
        self.register_buffer("weight", V.to(device=W.device, dtype=W.dtype))

    @classmethod
    def options(cls):
        return ("sigma",)

    def V(self, W: Tensor) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, seed={self.seed}"


def _default_init(shape, fan: int, gen: torch.Generator) -> Tensor:
    """PyTorch's default Linear/Conv2d init, U(−1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan) if fan > 0 else 0.0
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


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
        V = _default_init(W.shape, fan_in(W), _cpu_generator(seed))
        self.weight = nn.Parameter(V.to(device=W.device, dtype=W.dtype))

    def V(self, W: Tensor) -> Tensor:
        return self.weight


@register("PFA")
class ProductFeedbackAlignment(Feedback):
    """Product Feedback Alignment, V = B·R. Li Ji-An & Benna 2024.

    B (N_out × αN_out) is fixed random with E[BBᵀ] = I (entries N(0, 1/(αN_out))), R
    (αN_out × N_in) is learned with ΔR = Bᵀ ΔW: the layer hands W's gradient to V, and autograd
    through V = B·R gives R the gradient Bᵀ g_W. For a conv layer B is a 1×1 kernel and R a k×k
    kernel; V is formed once per step, never by pushing activations through R.
    """

    learned = True

    def __init__(self, W: Tensor, seed: int, alpha: float = 10, orthogonal: bool = False):
        super().__init__(W, seed)
        n_out = W.shape[0]
        hidden = int(round(alpha * n_out))
        if hidden < 1:
            raise AsymbpError(f"PFA alpha must give at least one hidden unit, got alpha={alpha}")
        self.alpha, self.orthogonal = float(alpha), bool(orthogonal)
        gen = _cpu_generator(seed)
        if orthogonal:
            if hidden < n_out:
                raise AsymbpError("PFA with orthogonal B needs alpha >= 1")
            q, r = torch.linalg.qr(torch.randn(hidden, n_out, generator=gen))  # (αN, N), q: (αN, N)
            B = (q * torch.sign(torch.diagonal(r))).T  # (N, αN) with orthonormal rows: BBᵀ = I
        else:
            B = torch.randn(n_out, hidden, generator=gen) / math.sqrt(hidden)
        R = _default_init((hidden, *W.shape[1:]), fan_in(W), gen)  # (αN_out, C_in, kh, kw)
        self.register_buffer("B", B.to(device=W.device, dtype=W.dtype))
        self.R = nn.Parameter(R.to(device=W.device, dtype=W.dtype))

    @classmethod
    def options(cls):
        return ("alpha", "orthogonal")

    def V(self, W: Tensor) -> Tensor:
        # (N_out, αN) @ (αN, C_in·kh·kw) -> W's shape
        return (self.B @ self.R.flatten(1)).view(W.shape)

    @property
    def factored(self) -> bool:
        """A Linear layer may skip forming V (layers.PFALinearFunction)."""
        return self.R.dim() == 2

    def factored_is_cheaper(self, rows: int) -> bool:
        """Multiply-adds of the factored backward vs forming V and Bᵀ g_W, for `rows` inputs."""
        n_out, hidden = self.B.shape
        n_in = self.R.shape[1]
        return rows * hidden * (n_out + 2 * n_in) < 2 * hidden * n_out * n_in + rows * n_out * n_in

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, orthogonal={self.orthogonal}, seed={self.seed}"


@register("PFA-o")
class OrthogonalProductFeedbackAlignment(ProductFeedbackAlignment):
    """PFA with α = 1 and an orthogonal B. Li Ji-An & Benna 2024."""

    def __init__(self, W: Tensor, seed: int, alpha: float = 1, orthogonal: bool = True):
        super().__init__(W, seed, alpha=alpha, orthogonal=orthogonal)


@register("WM")
class WeightMirror(Feedback):
    """Weight mirrors: V is learned in a separate mirror phase from the layer's own activity.

    Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, "Deep learning without weight transport"
    (NeurIPS 2019). In a mirror step (`mirror_step(model)`, interleaved with training by
    `TrainConfig.mirror_every` / `mirror_steps`) each layer's input is zero-mean noise
    x ~ N(0, σ²), its output is y = W x (bias left out), and

        V ← V + η · (y xᵀ) / N − λ · V          (N = mirror batch)

    Since E[y xᵀ] = σ² W, V tends to (ησ²/λ) W: it points along W without reading it. For a
    conv layer x is a batch of single patches (N, C_in, d(kh−1)+1, d(kw−1)+1), y the 1×1 output,
    and y xᵀ the weight-gradient correlation (for groups too). V is a buffer: the task optimizer
    never changes it, `learned = False`, and it is saved with `state_dict` (with the noise
    generator's state). It starts as an independent draw of the default initialisation.

    Options: `sigma` σ (1.0), `mirror_lr` η (0.05), `mirror_decay` λ (0.05; η = λ keeps
    ‖V‖ ≈ ‖W‖ at σ = 1), `mirror_batch` N (256).
    """

    mirrored = True

    def __init__(self, W: Tensor, seed: int, sigma: float = 1.0, mirror_lr: float = 0.05,
                 mirror_decay: float = 0.05, mirror_batch: int = 256):
        super().__init__(W, seed)
        if not (sigma > 0 and mirror_lr > 0 and 0 <= mirror_decay < 1 and int(mirror_batch) >= 1):
            raise AsymbpError("WM needs sigma > 0, mirror_lr > 0, 0 <= mirror_decay < 1 and "
                              f"mirror_batch >= 1; got {sigma}, {mirror_lr}, {mirror_decay}, "
                              f"{mirror_batch}")
        self.sigma, self.mirror_lr = float(sigma), float(mirror_lr)
        self.mirror_decay, self.mirror_batch = float(mirror_decay), int(mirror_batch)
        V = _default_init(W.shape, fan_in(W), _cpu_generator(seed))
        self.register_buffer("weight", V.to(device=W.device, dtype=W.dtype))
        self._gen: torch.Generator | None = None
        self._gen_state: Tensor | None = None

    @classmethod
    def options(cls):
        return ("sigma", "mirror_lr", "mirror_decay", "mirror_batch")

    def V(self, W: Tensor) -> Tensor:
        return self.weight

    def _generator(self, device) -> torch.Generator:
        return _device_generator(self, device, (self.seed * 40503 + 7) % (2**63))

    def noise(self, layer: nn.Module) -> Tensor:
        """The mirror phase's input x ~ N(0, σ²): (N, in) or (N, C_in, patch_h, patch_w)."""
        W = layer.weight
        if isinstance(layer, nn.Conv2d):
            patch = [d * (k - 1) + 1 for d, k in zip(layer.dilation, layer.kernel_size)]
            shape = (self.mirror_batch, layer.in_channels, *patch)
        else:
            shape = (self.mirror_batch, W.shape[1])
        return torch.randn(shape, generator=self._generator(W.device), device=W.device,
                           dtype=W.dtype) * self.sigma

    @torch.no_grad()
    def mirror_update(self, layer: nn.Module, x: Tensor) -> Tensor:
        """ΔV = η · (y xᵀ)/N − λ V for the noise batch x, with y = W x; applied and returned."""
        W = layer.weight.detach()
        N = x.shape[0]
        if isinstance(layer, nn.Conv2d):
            y = torch.nn.functional.conv2d(x, W, None, 1, 0, layer.dilation, layer.groups)
            # y xᵀ for a conv: the weight-gradient correlation of output y and input x
            yx = torch.ops.aten.convolution_backward(
                y, x, W, None, [1, 1], [0, 0], list(layer.dilation), False, [0, 0],
                layer.groups, [False, True, False])[1]
        else:
            y = x @ W.T  # (N, in) @ (in, out) -> (N, out)
            yx = y.T @ x  # (out, N) @ (N, in) -> (out, in)
        dV = self.mirror_lr * yx / N - self.mirror_decay * self.weight
        self.weight.add_(dV)
        return dV

    def mirror(self, layer: nn.Module) -> None:
        """One mirror step on `layer` (whose feedback this is)."""
        self.mirror_update(layer, self.noise(layer))

    def get_extra_state(self):
        return {"generator": self._gen.get_state() if self._gen is not None else self._gen_state}

    def set_extra_state(self, state) -> None:
        self._gen_state = state.get("generator") if state else None
        self._gen = None

    def extra_repr(self) -> str:
        return (f"sigma={self.sigma}, mirror_lr={self.mirror_lr}, "
                f"mirror_decay={self.mirror_decay}, mirror_batch={self.mirror_batch}, "
                f"seed={self.seed}")


def mirror_step(model: nn.Module, steps: int = 1) -> int:
    """Run `steps` mirror steps on every weight-mirror (`WM`) layer of `model`.

    Returns the number of layers mirrored (0 when the model has no WM layer). The task's
    gradients, optimizer and BN statistics are untouched: each layer is driven by its own noise.
    """
    layers = [m for m in model.modules() if isinstance(getattr(m, "feedback", None), WeightMirror)]
    for _ in range(int(steps)):
        for layer in layers:
            layer.feedback.mirror(layer)
    return len(layers)


# Direct feedback alignment lives with its plumbing (the output-error hooks) in dfa.py.
from .dfa import DirectFeedbackAlignment  # noqa: E402,F401
