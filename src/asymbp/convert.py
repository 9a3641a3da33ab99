"""Make any `nn.Module` asymmetric: swap its Linear/Conv2d layers for AsymLinear/AsymConv2d."""

from __future__ import annotations

import fnmatch
import warnings
from typing import Iterable

from torch import nn

from .errors import AsymbpError
from .feedback import resolve
from .layers import ASYM_LAYERS, AsymConv2d, AsymLinear, asym_layers

# Layer types that carry weights but have no asymmetric version: converting a model that holds
# one is an error unless it is excluded (silently leaving it symmetric would skew a comparison).
_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d, nn.Bilinear, nn.RNNBase, nn.RNNCellBase)
# Lookups: no error flows back through the table to an input, so there is no feedback to make.
_NO_FEEDBACK = (nn.Embedding, nn.EmbeddingBag)


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

    Raises `AsymbpError`, changing nothing, for a model with no Linear/Conv2d left to convert or
    holding a weighted layer with no asymmetric version (Conv1d/3d, ConvTranspose, Bilinear,
    RNN/LSTM/GRU and their cells) that is not excluded. Warns (`UserWarning`, one per call) for
    weights that stay symmetric: a MultiheadAttention's packed input projection (only its
    out_proj is a Linear) and raw matrix Parameters of other modules.
    """
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    cls, _ = resolve(scheme)  # a bad name fails before anything is changed
    if isinstance(model, ASYM_LAYERS + (nn.Linear, nn.Conv2d)):
        return _convert_one(model, scheme, layer_seed(seed, 0), weight_norm, options)
    if isinstance(model, _UNSUPPORTED):
        _unsupported("", model)

    # Look at the whole model before changing anything: an error leaves it as it was.
    targets, symmetric = _targets(model, exclude)
    if symmetric:
        # stacklevel 2: the warning points at the caller's convert(...) line.
        warnings.warn(f"convert({type(model).__name__}, {scheme!r}): {len(symmetric)} weight(s) "
                      "keep symmetric feedback (backprop's W^T), asymbp has no asymmetric "
                      f"version of them: {'; '.join(symmetric)}. To convert them, build them from "
                      "Linear/Conv2d layers; to accept this, exclude their modules",
                      UserWarning, stacklevel=2)
    options = cls.prepare_model(model, options)  # e.g. DFA's output-error hooks on the root
    for index, name in enumerate(targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        setattr(parent, child, _convert_one(layer, scheme, layer_seed(seed, index), weight_norm,
                                            options))
    return model


def _targets(model: nn.Module, exclude: list[str]) -> tuple[list[str], list[str]]:
    """The names of the layers `convert` swaps, and the weights it leaves symmetric (described);
    the one-line error for an unsupported layer or for nothing to convert."""
    targets, symmetric = [], []
    for name, module in model.named_modules():
        if name and _matches(name, exclude):
            continue
        if name and isinstance(module, _UNSUPPORTED):
            _unsupported(name, module)
        if name and isinstance(module, (nn.Linear, nn.Conv2d)):
            targets.append(name)
        elif not (targets and name.startswith(targets[-1] + ".")):  # not inside a target
            symmetric += _kept_symmetric(name, module)  # (pre-order: its parts come next)
    if not targets:
        raise AsymbpError(
            f"nothing to convert in {type(model).__name__}: it has no Linear or Conv2d layer"
            f"{' outside exclude=' + repr(exclude) if exclude else ''}; valid layer types: "
            "Linear, Conv2d (and AsymLinear, AsymConv2d, which get the new scheme)")
    return targets, symmetric


def _kept_symmetric(name: str, module: nn.Module) -> list[str]:
    """The weights of `module` itself that convert leaves to plain autograd: the packed input
    projection of a MultiheadAttention (only its out_proj is a Linear), and any raw matrix
    Parameter of another module (1-D ones are elementwise scales and biases: no transport)."""
    if isinstance(module, nn.MultiheadAttention):
        packed = [p for p in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                              "v_proj_weight") if getattr(module, p, None) is not None]
        return [f"{name or 'the model'} (MultiheadAttention: its packed input projection "
                f"{', '.join(packed)}; only out_proj is converted)"]
    if isinstance(module, ASYM_LAYERS + _NO_FEEDBACK + (nn.Linear, nn.Conv2d)):
        return []
    prefix = name + "." if name else ""
    return [f"{prefix}{p} ({type(module).__name__}: a raw {tuple(w.shape)} Parameter)"
            for p, w in module.named_parameters(recurse=False) if w.dim() >= 2]


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
    for index, (_, layer) in enumerate(asym_layers(model)):
        layer.set_scheme(layer.scheme, seed=layer_seed(seed, index),
                         **layer.feedback.option_values())

