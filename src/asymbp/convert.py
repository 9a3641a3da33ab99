"""Make any `nn.Module` asymmetric: swap its Linear/Conv2d layers for AsymLinear/AsymConv2d."""

from __future__ import annotations

import fnmatch
from typing import Iterable

from torch import nn

from . import dfa
from .errors import AsymbpError
from .feedback import resolve
from .layers import ASYM_LAYERS, AsymConv2d, AsymLinear

# Layer types that carry weights but have no asymmetric version: converting a model that holds
# one is an error unless it is excluded (silently leaving it symmetric would skew a comparison).
_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d, nn.Bilinear)


def layer_seed(model_seed: int, index: int) -> int:
    """The seed of the `index`-th converted layer: distinct per layer, fixed by the model seed."""
    return (int(model_seed) * 1_000_003 + index * 7919 + 17) % (2**62)


def _asym_like(layer: nn.Module, scheme: str, seed: int, weight_norm: bool, options: dict):
    """An asymmetric copy of `layer` that shares its weight and bias Parameters."""
    W = layer.weight
    meta = dict(device="meta", dtype=W.dtype, seed=0)  # a shell; the real weights come next
    if isinstance(layer, nn.Linear):
        new = AsymLinear(layer.in_features, layer.out_features, layer.bias is not None, **meta)
    else:
        new = AsymConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                         layer.padding_mode, **meta)
    new.weight, new.bias = layer.weight, layer.bias  # the same Parameters: optimizers stay valid
    new.train(layer.training)
    new.weight_norm = bool(weight_norm)
    new.w0_norm = W.detach().norm().reshape(()).clone()
    new.set_scheme(scheme, seed=seed, **options)
    return new


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p)
               for p in patterns)


def convert(model: nn.Module, scheme: str = "BP", *, seed: int = 0, exclude: Iterable[str] = (),
            weight_norm: bool = False, **options) -> nn.Module:
    """Swap every `nn.Linear` / `nn.Conv2d` of `model` for its asymmetric version, in place.

    The new layers share the old ones' weight and bias Parameters. Layers already asymmetric get
    the new scheme. Feedback draws are seeded per layer from `seed`, so the same model and seed
    give the same feedback in every process.

    Arguments:
        model: any module; when it is itself a Linear/Conv2d the converted layer is returned.
        scheme: a feedback scheme name, e.g. "uSF", "brSF-25", "RndF", "PFA".
        seed: the model seed for all feedback draws.
        exclude: module names (or glob patterns, e.g. "classifier", "layer4.*") left untouched.
        weight_norm: the +WN constraint (keep each layer's ‖W‖ at its initial value).
        **options: the scheme's options (p, sigma, alpha, ...). `DFA` takes `num_classes`
            (default: the model's output size, the last Linear's out_features).

    Returns:
        The model (the same object, converted), or the new layer when `model` was a bare layer.
    """
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    cls, _ = resolve(scheme)  # a bad name fails before anything is changed
    whole_model = not isinstance(model, ASYM_LAYERS + (nn.Linear, nn.Conv2d))
    if cls.direct and whole_model:
        # DFA: every layer projects the model's output error (C = the output size), which
        # hooks on the root model capture at the start of each backward (asymbp/dfa.py).
        if options.get("num_classes") is None:
            options = {**options, "num_classes": dfa.infer_num_classes(model)}
        dfa.install(model)
    elif whole_model:
        dfa.uninstall(model)
    if isinstance(model, ASYM_LAYERS + (nn.Linear, nn.Conv2d)):
        return _convert_one(model, scheme, layer_seed(seed, 0), weight_norm, options)
    if isinstance(model, _UNSUPPORTED):
        _unsupported("", model)

    targets = []
    for name, module in model.named_modules():
        if not name or _matches(name, exclude):
            continue
        if isinstance(module, _UNSUPPORTED):
            _unsupported(name, module)
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            targets.append(name)
    for index, name in enumerate(targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        setattr(parent, child, _convert_one(layer, scheme, layer_seed(seed, index), weight_norm,
                                            options))
    return model


def _convert_one(layer, scheme, seed, weight_norm, options):
    if isinstance(layer, ASYM_LAYERS):
        layer.weight_norm = bool(weight_norm) or layer.weight_norm
        layer.set_scheme(scheme, seed=seed, **options)
        return layer
    return _asym_like(layer, scheme, seed, weight_norm, options)


def _unsupported(name: str, module: nn.Module):
    where = f" at {name!r}" if name else ""
    raise AsymbpError(
        f"cannot convert {type(module).__name__}{where}; valid layer types: Linear, Conv2d "
        "(leave it out with exclude=[...])"
    )


def set_feedback_seed(model: nn.Module, seed: int) -> None:
    """Re-seed every asymmetric layer's feedback (fixed draws are redrawn from the new seed)."""
    for index, (_, layer) in enumerate(
        (n, m) for n, m in model.named_modules() if isinstance(m, ASYM_LAYERS)
    ):
        opts = _scheme_options(layer.feedback)
        layer.set_scheme(layer.scheme, seed=layer_seed(seed, index), **opts)


def _scheme_options(f) -> dict:
    return {k: getattr(f, k) for k in type(f).options() if hasattr(f, k)}

