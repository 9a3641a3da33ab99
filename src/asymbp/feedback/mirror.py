"""Weight mirrors (`WM`): the scheme, the mirror phase (`mirror_step`) and its schedule during
training (`MirrorSchedule`). Akrout et al. 2019.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import AsymbpError
from ..rng import LayerGenerator, cpu_generator
from .base import Feedback, default_init, fan_in, register


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
        V = default_init(W.shape, fan_in(W), cpu_generator(seed))
        self.register_buffer("weight", V.to(device=W.device, dtype=W.dtype))
        self._rng = LayerGenerator((self.seed * 40503 + 7) % (2**63))  # the mirror noise

    @classmethod
    def options(cls):
        return ("sigma", "mirror_lr", "mirror_decay", "mirror_batch")

    def V(self, W: Tensor) -> Tensor:
        return self.weight

    def noise(self, layer: nn.Module) -> Tensor:
        """The mirror phase's input x ~ N(0, σ²): (N, in) or (N, C_in, patch_h, patch_w)."""
        W = layer.weight
        if isinstance(layer, nn.Conv2d):
            patch = [d * (k - 1) + 1 for d, k in zip(layer.dilation, layer.kernel_size)]
            shape = (self.mirror_batch, layer.in_channels, *patch)
        else:
            shape = (self.mirror_batch, W.shape[1])
        return torch.randn(shape, generator=self._rng.on(W.device), device=W.device,
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
        return {"generator": self._rng.get_state()}

    def set_extra_state(self, state) -> None:
        self._rng.set_state(state.get("generator") if state else None)

    def extra_repr(self) -> str:
        return (f"sigma={self.sigma}, mirror_lr={self.mirror_lr}, "
                f"mirror_decay={self.mirror_decay}, mirror_batch={self.mirror_batch}, "
                f"seed={self.seed}")


def mirror_step(model: nn.Module, steps: int = 1) -> int:
    """Run `steps` mirror steps on every weight-mirror (`WM`) layer of `model`.

    Returns the number of layers mirrored (0 when the model has no WM layer). The task's
    gradients, optimizer and BN statistics are untouched: each layer is driven by its own noise.
    """
    layers = mirrored_layers(model)
    for _ in range(int(steps)):
        for layer, f in layers:
            f.mirror(layer)
    return len(layers)


def mirrored_layers(model: nn.Module) -> list[tuple[nn.Module, Feedback]]:
    """(layer, its feedback) for every layer of `model` whose scheme is `mirrored`."""
    # A scheme is its layer's child module: no need to know the layer types here.
    return [(layer, f) for layer in model.modules() for f in layer.children()
            if isinstance(f, Feedback) and f.mirrored]


@dataclass
class MirrorSchedule:
    """When training runs the mirror steps: `warmup_steps` before the first training step, then
    `steps` after every `every` training steps (`TrainConfig.mirror_warmup`, `mirror_steps`,
    `mirror_every`). For a model without a WM layer it does nothing.
    """

    model: nn.Module
    every: int = 1
    steps: int = 1
    warmup_steps: int = 0
    active: bool = False  # the model has a mirrored layer
    done: int = 0  # training steps taken since the schedule was made

    @classmethod
    def from_config(cls, model: nn.Module, cfg) -> "MirrorSchedule":
        """The schedule of a `TrainConfig` (its `mirror_every`, `mirror_steps`, `mirror_warmup`)."""
        return cls(model, int(cfg.mirror_every), int(cfg.mirror_steps), int(cfg.mirror_warmup),
                   active=bool(mirrored_layers(model)))

    def warmup(self) -> None:
        """The mirror steps before training starts (not again when a run resumes)."""
        if self.active:
            mirror_step(self.model, self.warmup_steps)

    def after_step(self) -> None:
        """Called after each training step: every `every` steps, `steps` mirror steps."""
        self.done += 1
        if self.active and self.done % self.every == 0:
            mirror_step(self.model, self.steps)  # V learns from noise, off-task
