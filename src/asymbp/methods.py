"""Method strings (DESIGN §4): the paper's column names as the user interface.

Grammar: `[scheme][+BN][+BM|+BM1|+BM2|+BM3|+Adam][+WN][@bottom|@top]`, case-insensitive.

- no scheme means symmetric backprop (`BP`); `SGD` alone means `BP` with update setting 0;
- `BN`: batch normalisation after every conv and hidden fc layer; with learnable scale and shift
  only in the symmetric entries (`BN`, `BN+BM`), without them for every asymmetric scheme;
- `BM` = `BM1`: Batch Manhattan settings 1–3 (DESIGN §3); `Adam`: torch's Adam (BioTorch's
  optimizer; `Adam` alone is BP with Adam); no update part means SGD (setting 0);
- `WN`: keep each layer's weight norm at its initial value (Moskovitz et al. 2018);
- `@bottom` / `@top`: Experiment C2's frozen random layers (the last layer / all but the last).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import feedback as fb
from .errors import AsymbpError
from .optim import UPDATE_RULES

FREEZE = ("none", "bottom", "top")

GRAMMAR = (
    "[scheme][+BN][+BM|+BM1|+BM2|+BM3|+Adam][+WN][@bottom|@top]; no scheme means BP, "
    "'SGD' alone means BP with plain SGD, 'Adam' alone BP with Adam"
)


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method string: everything a run needs to build its model and optimizer."""

    scheme: str = "BP"  # canonical scheme name, e.g. "uSF", "brSF"
    p: float | None = None  # sign-flip probability in % (brSF / frSF)
    bn: bool = False
    bn_affine: bool = False  # BN's learnable scale/shift: only for symmetric BP (the paper's BN)
    update: str = "SGD"  # SGD (setting 0), BM1 / BM2 / BM3 or Adam
    weight_norm: bool = False
    freeze: str = "none"  # Experiment C2
    options: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        """The canonical method string."""
        parts = []
        if self.scheme != "BP":
            p = self.p or 0
            parts.append(f"{self.scheme}-{_fmt(p)}" if p else self.scheme)
        if self.bn:
            parts.append("BN")
        if self.update != "SGD":
            parts.append("BM" if self.update == "BM1" else self.update)
        if self.weight_norm:
            parts.append("WN")
        text = "+".join(parts) or "SGD"
        return text + (f"@{self.freeze}" if self.freeze != "none" else "")

    @property
    def scheme_options(self) -> dict:
        """Keyword options for the feedback scheme (p, plus any extra options)."""
        opts = dict(self.options)
        if self.p:
            opts["p"] = self.p
        return opts

    @property
    def scheme_name(self) -> str:
        """The scheme as a feedback registry name, e.g. `brSF-25`."""
        return f"{self.scheme}-{_fmt(self.p)}" if self.p else self.scheme

    def replace(self, **changes) -> "MethodSpec":
        return dataclasses.replace(self, **changes)


def _fmt(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def _flip_forms() -> list[str]:
    """`brSF-p`, `frSF-p`: the schemes that take a flip probability p as a name suffix."""
    return [f"{name}-p" for name, cls in fb.SCHEMES.items() if cls.takes_p]


def _update_parts() -> str:
    """The update rules, as method-string parts: "SGD, BM1, BM2, BM3 (BM = BM1)"."""
    return f"{', '.join(UPDATE_RULES)} ({UPDATE_RULES.hint})"


def parse_method(text: str, **scheme_options) -> MethodSpec:
    """Parse a method string such as "uSF+BN+BM", "brSF-25+BN+BM", "RndF+BN@bottom".

    Raises `AsymbpError` (one line, listing the valid parts) for anything unknown.
    """
    raw, parts, freeze = _split(text)
    scheme, p, bn, update, wn = _read_parts(raw, parts)
    if scheme_options:
        _check_scheme_options(scheme, scheme_options)
    return MethodSpec(
        scheme=scheme,
        p=p,
        bn=bn,
        bn_affine=bn and scheme == "BP",
        update=update,
        weight_norm=wn,
        freeze=freeze,
        options=dict(scheme_options),
    )


def _split(text: str) -> tuple[str, list[str], str]:
    """(the stripped string, its `+` parts, the freeze suffix or "none")."""
    if not isinstance(text, str) or not text.strip():
        raise AsymbpError(f"empty method string; expected {GRAMMAR}")
    raw = text.strip()
    body, at, freeze = raw.partition("@")
    freeze = freeze.strip().lower() if at else "none"
    if freeze not in FREEZE:
        raise AsymbpError(f"unknown freeze suffix '@{freeze}' in {raw!r}; valid: @bottom, @top")
    parts = [p.strip() for p in body.split("+")]
    if any(not p for p in parts):
        raise AsymbpError(f"empty part in method string {raw!r}; expected {GRAMMAR}")
    return raw, parts, freeze


def _read_parts(raw: str, parts: list[str]) -> tuple[str, float | None, bool, str, bool]:
    """(scheme, p, bn, update, weight_norm) of a method string's parts; each at most once."""
    scheme, p, bn, update, wn = None, None, False, None, False
    for i, part in enumerate(parts):
        low = part.lower()
        if part in UPDATE_RULES:
            if update is not None:
                raise AsymbpError(f"two update rules in {raw!r}; give at most one of "
                                  f"{_update_parts()}")
            update = UPDATE_RULES.canonical(part)
        elif low == "bn":
            if bn:
                raise AsymbpError(f"'BN' appears twice in {raw!r}")
            bn = True
        elif low == "wn":
            if wn:
                raise AsymbpError(f"'WN' appears twice in {raw!r}")
            wn = True
        else:
            if i != 0 or scheme is not None:
                valid = ", ".join([*fb.scheme_names(), *_flip_forms(), "BN", _update_parts(), "WN"])
                raise AsymbpError(
                    f"unknown part {part!r} in method {raw!r}; valid parts: {valid} "
                    f"(the scheme comes first: {GRAMMAR})"
                )
            try:
                cls, implied = fb.resolve(part)
            except AsymbpError as err:
                raise AsymbpError(f"in method {raw!r}: {err}") from None
            scheme, p = cls.name, implied.get("p")
    return scheme or "BP", p or None, bn, update or "SGD", wn  # p = 0: no flips


def _check_scheme_options(scheme: str, options: dict) -> None:
    cls, _ = fb.resolve(scheme)
    bad = sorted(set(options) - set(cls.options()))
    if bad:
        raise AsymbpError(
            f"scheme {scheme} takes no option {', '.join(bad)}; its options: "
            f"{', '.join(cls.options()) or 'none'}"
        )
    # The values too, before any work is done: the scheme built once on a small stand-in W
    # raises its own one-line error for a bad value (scale=bogus). A scheme that needs more
    # than (W, seed) to be built is checked when its layers are.
    import torch

    try:
        cls(torch.ones(4, 3), 0, **options)
    except AsymbpError:
        raise
    except Exception:  # noqa: BLE001 - not a value error of the options
        pass


def describe() -> str:
    """The grammar and the valid parts, for `asymbp methods`."""
    lines = [
        f"Method grammar: {GRAMMAR}",
        "",
        "Feedback schemes (DESIGN §2):",
    ]
    for cls in fb.SCHEMES.values():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {cls.name:<7} {doc}")
    lines += [
        f"  {' / '.join(_flip_forms())}   p = 0..100: the percentage of feedback signs that "
        "disagree with W",
        "",
        "Other parts:",
        "  BN      batch normalisation after each conv / hidden fc (affine only with BP)",
        "  BM, BM1 Batch Manhattan setting 1; BM2, BM3 settings 2 and 3; none: SGD (setting 0)",
        "  Adam    Adam (torch.optim.Adam, BioTorch's optimizer; --betas, --eps)",
        "  WN      keep each layer's weight norm at its initial value",
        "  @bottom last layer random and frozen; @top every layer but the last random and frozen",
        "",
        "Examples: SGD, BM, BN+BM, uSF+BN+BM, brSF-25+BN+BM, frSF+BN+BM, RndF+BN, PFA+BN, sSF+WN, "
        "uSF+Adam",
    ]
    return "\n".join(lines)
