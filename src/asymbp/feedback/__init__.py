"""Feedback schemes: how the feedback weights `V` are made (DESIGN §2).

- `base`: the `Feedback` interface (every capability a scheme declares, with its default), the
  registry `SCHEMES` and `resolve` / `make`, and the helpers the schemes share;
- `schemes`: BP, uSF, NuSF, sSF, brSF, frSF, RndF, KP, PFA, PFA-o, each beside its citation;
- `mirror`: weight mirrors (WM), the mirror phase and its schedule during training;
- `dfa`: direct feedback alignment (DFA) and its output-error hooks.

The schemes register in the order of their modules here, the order `asymbp methods` lists them.
"""

from .base import (SCHEMES, Feedback, check_density, check_p, default_init, eager, fan_in, fans,
                   fsign, keep_mask, make, option_variants, parse_options, register, resolve,
                   scheme_names, variants, xavier_bound)
from .schemes import (BP, BatchwiseRandomSignFeedback, FixedRandomSignFeedback, KolenPollack,
                      NormalizedUniformSignFeedback, OrthogonalProductFeedbackAlignment,
                      ProductFeedbackAlignment, RandomFeedback, ScaledSignFeedback,
                      UniformSignFeedback)
from .mirror import MirrorSchedule, WeightMirror, mirror_step, mirrored_layers  # noqa: I001
from .dfa import DirectFeedbackAlignment  # noqa: I001

__all__ = [
    "BP",
    "SCHEMES",
    "BatchwiseRandomSignFeedback",
    "DirectFeedbackAlignment",
    "Feedback",
    "FixedRandomSignFeedback",
    "KolenPollack",
    "MirrorSchedule",
    "NormalizedUniformSignFeedback",
    "OrthogonalProductFeedbackAlignment",
    "ProductFeedbackAlignment",
    "RandomFeedback",
    "ScaledSignFeedback",
    "UniformSignFeedback",
    "WeightMirror",
    "check_density",
    "check_p",
    "default_init",
    "eager",
    "fan_in",
    "fans",
    "fsign",
    "keep_mask",
    "make",
    "mirror_step",
    "mirrored_layers",
    "option_variants",
    "parse_options",
    "register",
    "resolve",
    "scheme_names",
    "variants",
    "xavier_bound",
]
