"""The feedback interface: what every scheme declares, the registry, and the helpers they share.

A scheme is a small `nn.Module` that lives on its layer as `layer.feedback`. It holds whatever
state `V` is made from — fixed random draws in buffers (saved with `state_dict`), learned feedback
as `nn.Parameter`s (updated by any optimizer) — and `V(W)` returns the feedback weights for the
current step, in `W`'s shape. Everything else the layers, `convert` and `train` need to know
about a scheme is declared on `Feedback` with its default, and a scheme overrides what differs.

Every scheme is registered by the name used in method strings; lookups are case-insensitive, and
`brSF-25` / `frSF-50` mean `brSF` / `frSF` with sign-flip probability p = 25 % / 50 %.
"""

from __future__ import annotations

import functools
import math
import re
import sys

import torch
from torch import Tensor, nn

from ..errors import AsymbpError
from ..registry import Registry
from ..rng import cpu_generator

SCHEMES: Registry[type["Feedback"]] = Registry(
    "feedback scheme", hint="and brSF-p, frSF-p with p = 0..100, the % of flipped signs")


def register(name: str):
    """Class decorator: register a feedback scheme under `name` (case-insensitive)."""

    def deco(cls: type[Feedback]) -> type[Feedback]:
        cls.name = name
        return SCHEMES.register(name, cls)

    return deco


def scheme_names() -> list[str]:
    """The registered scheme names, as printed in method strings."""
    return list(SCHEMES)


def option_variants() -> list[tuple[str, dict]]:
    """Each scheme with each of its non-default options (`Feedback.examples`), as (name, options):
    the oracle tests build every scheme these ways too, beside the plain `variants()`."""
    return [(name, dict(opts)) for name, cls in SCHEMES.items() for opts in cls.examples]


def variants(flips: tuple[float, ...] = (25, 50, 100)) -> list[str]:
    """Every registered scheme, then each scheme that takes a flip probability at every p of
    `flips` (`brSF-25`, ..., `frSF-100`): one name for each way a scheme can be built."""
    flipped = [f"{name}-{p:g}" for name, cls in SCHEMES.items() if cls.takes_p for p in flips]
    return scheme_names() + flipped


_FLIP_SUFFIX = re.compile(r"^(?P<base>[a-z]+)-(?P<p>\d+(?:\.\d+)?)$", re.IGNORECASE)


def resolve(name: str) -> tuple[type["Feedback"], dict]:
    """Scheme class and implied options for a name such as `uSF`, `brSF-25`, `PFA-o`.

    Raises `AsymbpError` listing the valid names when `name` is unknown, or when the flip
    probability p of `brSF-p` / `frSF-p` is outside 0–100.
    """
    text = str(name).strip()
    if text in SCHEMES:
        return SCHEMES[text], {}
    m = _FLIP_SUFFIX.match(text)
    if m and m["base"] in SCHEMES and SCHEMES[m["base"]].takes_p:
        p = float(m["p"])
        check_p(p)
        return SCHEMES[m["base"]], {"p": p}
    return SCHEMES[text], {}  # the registry's one-line error, listing the valid names


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


def parse_options(items) -> dict:
    """Scheme options from `KEY=VALUE` texts (a command line's `--scheme-option scale=xavier`):
    a number becomes a float (an int when integral), true/false a bool, anything else stays text.
    """
    options = {}
    for item in items:
        key, eq, text = str(item).partition("=")
        key, text = key.strip(), text.strip()
        if not eq or not key.isidentifier() or not text:
            raise AsymbpError(f"scheme option {item!r} is not KEY=VALUE; give e.g. scale=xavier "
                              "or density=0.1")
        options[key] = _option_value(text)
    return options


def _option_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


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


def fans(W: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init computes them: C_in·k·k and C_out·k·k for a conv
    (C_in per group), in_features and out_features for a Linear."""
    receptive = W[0][0].numel() if W.dim() > 2 else 1
    return W.shape[1] * receptive, W.shape[0] * receptive


def xavier_bound(W: Tensor) -> float:
    """a = √(6 / (fan_in + fan_out)): Xavier-uniform's U(−a, a) for W's shape (Glorot & Bengio
    2010), the scale of BioTorch's feedback."""
    fi, fo = fans(W)
    return math.sqrt(6.0 / (fi + fo))


def check_choice(scheme: str, option: str, value, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise AsymbpError(f"{scheme} {option}={value!r} is not one of {', '.join(valid)}; "
                          f"give e.g. {option}={valid[-1]}")
    return value


def check_density(density) -> float:
    try:
        d = float(density)
    except (TypeError, ValueError):
        d = math.nan
    if not 0.0 < d <= 1.0:
        raise AsymbpError(f"feedback density={density!r} is outside (0, 1]; give the fraction of "
                          "feedback connections to keep, e.g. density=0.1 (1: all)")
    return d


def keep_mask(shape, density: float, seed: int) -> Tensor | None:
    """Sparse feedback (Li & Benna 2024): a fixed 0/1 mask keeping each entry with probability
    `density`; None at density 1 (everything kept, no buffer, nothing drawn).

    Drawn on the CPU from its own stream of the layer's seed, so the scheme's other draws (M, V,
    B) stay those of the dense scheme, and every process and device draws the same mask.
    """
    if density >= 1.0:
        return None
    gen = cpu_generator((int(seed) * 2654435761 + 2) % (2**63))
    return (torch.rand(tuple(shape), generator=gen) < density).float()


def default_init(shape, fan: int, gen: torch.Generator) -> Tensor:
    """PyTorch's default Linear/Conv2d init, U(−1/√fan_in, 1/√fan_in) (a learned V's start)."""
    bound = 1.0 / math.sqrt(fan) if fan > 0 else 0.0
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def eager(fn):
    """`fn`, always run eagerly: under `torch.compile` it is called, never traced.

    For code that keeps Python state between calls (a draw cached until W's next update, DFA's
    output-error slots), which a trace would bake into the graph. It is `torch.compiler.disable`,
    made once torch._dynamo is loaded instead of at import: importing it (and sympy with it)
    costs seconds that `import asymbp` need not pay. Made inside the first trace (when nothing
    ran eagerly since torch.compile loaded it), it costs that compiled code one graph break more.
    """
    disabled = []  # torch.compiler.disable(fn), made once

    def make_disabled() -> None:
        disabled.append(torch.compiler.disable(fn))

    if "torch._dynamo" in sys.modules:
        make_disabled()

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if torch.compiler.is_compiling():
            if not disabled:
                make_disabled()
            return disabled[0](*args, **kwargs)
        if not disabled and "torch._dynamo" in sys.modules:
            make_disabled()  # now, before any trace needs it
        return fn(*args, **kwargs)

    return run


# Where a scheme keeps the hooks it puts on the root model (DFA's), so that any scheme can take
# them off again when the model is converted to it.
_MODEL_HOOKS = "_asymbp_model_hooks"


def install_model_hooks(model: nn.Module, pre_hook, hook) -> None:
    """Put a forward pre-hook and a forward hook on the root `model`, once (idempotent)."""
    if _MODEL_HOOKS in model.__dict__:
        return
    handles = (model.register_forward_pre_hook(pre_hook), model.register_forward_hook(hook))
    object.__setattr__(model, _MODEL_HOOKS, handles)  # not a submodule, not in state_dict


def remove_model_hooks(model: nn.Module) -> None:
    """Take off the hooks `install_model_hooks` put on `model` (none: nothing to do)."""
    for handle in model.__dict__.pop(_MODEL_HOOKS, ()):
        handle.remove()


class Feedback(nn.Module):
    """Base of every scheme. Subclasses set `name` (by `register`) and implement `V(W)`.

    The class attributes and methods below are everything the rest of asymbp asks a scheme;
    each has the default of a plain scheme (V from W, or fixed, sent back as Vᵀ g).
    """

    name = "?"
    learned = False  # V has nn.Parameters that the optimizer trains (gradient: DESIGN §2)
    redrawn = False  # V has random parts drawn afresh after every update of W
    symmetric = False  # V is W itself (BP)
    # dE/dx is the output error through a fixed matrix (DFA), not Vᵀ g: V(W) is only a stand-in,
    # and the layer hands its output to `attach`
    direct = False
    takes_p = False  # takes a sign-flip probability p, also as a name suffix: brSF-25
    mirrored = False  # V is learned in separate mirror steps (WM), which train() interleaves
    # takes `density`: only that fraction of the fixed feedback connections is kept (the rest
    # zero), chosen once from the seed: V's entries, or B's for DFA and PFA (Li & Benna 2024)
    sparse = False
    # non-default options the oracle tests also build the scheme with (`option_variants`)
    examples: tuple[dict, ...] = ()

    def __init__(self, W: Tensor, seed: int):
        super().__init__()
        self.seed = int(seed)

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The keyword options this scheme accepts; each is kept as an attribute of its name."""
        return ()

    def option_values(self) -> dict:
        """The options this scheme was built with (to rebuild it, e.g. with another seed)."""
        return {k: getattr(self, k) for k in self.options()}

    def V(self, W: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def factored_backward(self, rows: int) -> bool:
        """Whether a Linear layer's backward for `rows` inputs should use V's factors rather
        than V itself (PFA: layers.PFALinearFunction, when cheaper)."""
        return False

    def attach(self, y: Tensor, x: Tensor, conv: bool) -> Tensor:
        """A direct scheme's hook on the layer output y: x's gradient comes from it (DFA)."""
        return y

    def mirror(self, layer: nn.Module) -> None:
        """One mirror step on `layer` (schemes with `mirrored`; nothing for the others)."""

    @classmethod
    def prepare_model(cls, model: nn.Module, options: dict) -> dict:
        """Model-level set-up when `asymbp.convert` gives a whole model this scheme, before any
        layer is converted; returns the options the layers get. Default: take off the hooks
        an earlier scheme put on the model (DFA's), nothing else."""
        remove_model_hooks(model)
        return options

    def extra_repr(self) -> str:
        return f"seed={self.seed}"
