"""The packed trainer (issue 16): the runs of one sweep cell trained as one wide model.

A cell's runs share everything but the learning-rate multiplier and the seed. `train_packed`
builds each run's network exactly as `train()` would (its seed, its initial weights, its
feedback objects and their per-layer generators, its optimizer) and then steps all of them
together: every step is one forward and one backward of a `PackedNet` whose layers are the
copies' layers side by side —

    conv     the copies' W (and V) concatenated along dim 0, a grouped convolution
             (groups x N; `AsymConv2dFunction`, the same backward rule dE/dx = conv_t(g, V))
    linear   W, V stacked to (N, out, in), a batched matmul (`PackedLinearFunction`)
    BN       batch norm over N·C channels, which is per-copy batch norm
    rest     ReLU, pooling, padding: per channel, so the same op on the wide tensor

Activations are (B, N·C, H, W) and (B, N·D): copy i owns the channel (feature) block i, and
flattening (B, N·C, H, W) gives the copies' flattened blocks in a row, in the order of one
model's flatten. When the copies draw the same batches (one seed) the first layer takes the
one input (B, C, H, W) with the copies' kernels side by side (groups x 1); otherwise each copy
gets its own batch, stacked along channels.

The parameters stay the copies' own: the wide W is `torch.cat` of them each step, so autograd
hands each copy its own gradient, each copy keeps its own optimizer (`optim.py`'s rule, its own
lr and weight decay, unchanged), its feedback object computes V from its own W (a redrawn
scheme draws from its own generator, once per update of its W, as alone), and evaluation,
the post-epoch BN pass, alignment, health and checkpoints are `train()`'s own functions on the
copy's own model. What differs from `train()` is only the float rounding of a grouped
convolution / batched matmul against a single one (tests/test_packed.py bounds it).

A copy that diverges is recorded at that epoch (train()'s row) and leaves the pack; no
operation of the pack mixes copies (grouped convs, bmm, per-channel BN, per-copy losses), so its
NaNs reach no other copy. What cannot be packed (`pack_problem`: DFA, WM, ResNets, compile,
augmentation, bf16, data-parallel) is trained one by one with `train()`, the reason logged once.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as datasets
from .config import PER_RUN, TrainConfig, check_config, parse_milestones
from .errors import AsymbpError
from .execution import Execution, Progress
from .layers import (AsymConv2d, AsymConv2dFunction, AsymLinear, AsymLinearFunction, asym_layers,
                     renormalize)
from .models import MLP, PadRB, TableNet
from .train import (batch_schedule, build_model, check_model_fit, epoch_alignment, evaluate,
                    feedback_weight_decay_at, healthy, lr_at, prepare_data, refresh_bn_stats,
                    run_generators, run_optimizer, set_epoch_hyperparameters, summarize,
                    weight_decay_at)

__all__ = ["train_packed", "pack_problem", "cell_key", "PackedNet", "PackedLinearFunction"]

# Fields copies of one pack may differ in: the learning-rate multiplier and the seed.
PACK_FREE = ("lr_mult", "seed")
# Per channel (or per element): the same op on the wide tensor is the copies' ops side by side.
CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, PadRB, nn.Identity)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


# ---- the packed layers ------------------------------------------------------------------------


class PackedLinearFunction(torch.autograd.Function):
    """N linear layers at once: y_i = x_i W_iᵀ + b_i forward; dE/dx_i = g_i V_i backward.

    x (N, B, in), W and V (N, out, in), b (N, out) or None -> y (N, B, out). The rule of
    `AsymLinearFunction` per copy, as batched matmuls: nothing is summed across copies.
    """

    @staticmethod
    def forward(x: Tensor, W: Tensor, b: Tensor | None, V: Tensor) -> Tensor:
        y = torch.bmm(x, W.transpose(1, 2))  # (N, B, in) @ (N, in, out)
        return y if b is None else y + b.unsqueeze(1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, b, V = inputs
        need_x, need_W, _, need_V = ctx.needs_input_grad
        ctx.save_for_backward(x if (need_W or need_V) else None, V if need_x else None)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, V = ctx.saved_tensors
        need_x, need_W, need_b, need_V = ctx.needs_input_grad
        gx = gW = gb = gV = None
        if need_x:
            gx = torch.bmm(g, V)  # (N, B, out) @ (N, out, in)
        if need_W or need_V:
            gW = torch.bmm(g.transpose(1, 2), x)  # (N, out, B) @ (N, B, in)
        if need_b:
            gb = g.sum(1)
        if need_V:
            gV = gW.clone()  # learned feedback gets W's gradient, as alone
        return gx, gW if need_W else None, gb, gV


@dataclass
class _Wide:
    """An activation of the pack: `h` is one input shared by every copy (before the first
    weight layer, when the copies draw the same batch) or the copies' blocks side by side."""

    h: Tensor
    shared: bool


def _cat(tensors: list[Tensor | None], dim: int = 0) -> Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors, dim)


class PackedNet(nn.Module):
    """The copies' networks (`TableNet` or `MLP` stacks, one architecture) as one forward.

    It holds no parameters of its own: each call reads the copies' current W, V, BN buffers,
    so the copies' optimizers, feedback and checkpoints stay theirs. `forward(x, shared)`:
    x is (B, C, H, W) / (B, D) shared by all copies, or (B, N·C, H, W) / (B, N·D); returns the
    logits (B, N, classes).
    """

    def __init__(self, copies: list[nn.Module]):
        super().__init__()
        problem = stack_problem(copies[0])
        if problem:
            raise AsymbpError(f"cannot pack: {problem}")
        self.copies = list(copies)  # a plain list: not submodules (they are not this net's)
        self.stages = [_stages(m) for m in self.copies]  # [copy][position] -> module or None

    def forward(self, x: Tensor, shared: bool) -> Tensor:
        a = _Wide(x, shared)
        n = len(self.copies)
        for pos, first in enumerate(self.stages[0]):
            mods = [s[pos] for s in self.stages]
            if first is None:  # flatten: (B, N·C, H, W) -> (B, N·C·H·W), copy blocks in a row
                a = _Wide(a.h.flatten(1), a.shared)
            elif isinstance(first, AsymConv2d):
                a = self._conv(mods, a)
            elif isinstance(first, AsymLinear):
                a = self._linear(mods, a)
            elif isinstance(first, BATCHNORMS):
                a = _Wide(self._batch_norm(mods, a.h), False)
            else:  # CHANNELWISE
                a = _Wide(first(a.h), a.shared)
        out = a.h
        if a.shared:  # no weight layer at all: cannot happen for the packable stacks
            out = out.repeat(1, n)
        return out.view(out.shape[0], n, -1)

    @staticmethod
    def _conv(mods: list[AsymConv2d], a: _Wide) -> _Wide:
        first = mods[0]
        padding, pre = first._explicit_padding()
        h = a.h if pre is None else F.pad(a.h, pre)
        W = torch.cat([m.weight for m in mods])  # (N·out, in/groups, kh, kw)
        V = torch.cat([m._V_for_backward() for m in mods])
        b = _cat([m.bias for m in mods])
        if a.shared and first.groups != 1:
            h, a = h.repeat(1, len(mods), 1, 1), _Wide(a.h, False)  # (B, N·C, H, W)
        # shared input: the copies' kernels side by side over the one input (groups 1); else
        # copy i's groups over its own channel block (groups x N)
        groups = first.groups if a.shared else first.groups * len(mods)
        y = AsymConv2dFunction.apply(h, W, b, V, first.stride, padding, first.dilation, groups)
        return _Wide(y, False)

    @staticmethod
    def _linear(mods: list[AsymLinear], a: _Wide) -> _Wide:
        b = [m.bias for m in mods]
        V = [m._V_for_backward() for m in mods]
        if a.shared:  # (B, D) @ (N·out, D)ᵀ: one wider linear, AsymLinearFunction's rule
            y = AsymLinearFunction.apply(a.h, torch.cat([m.weight for m in mods]), _cat(b),
                                         torch.cat(V))
            return _Wide(y, False)
        n, B = len(mods), a.h.shape[0]
        x = a.h.view(B, n, -1).transpose(0, 1)  # (B, N·in) -> (N, B, in)
        y = PackedLinearFunction.apply(x, torch.stack([m.weight for m in mods]),
                                       None if b[0] is None else torch.stack(b), torch.stack(V))
        return _Wide(y.transpose(0, 1).reshape(B, -1), False)  # (N, B, out) -> (B, N·out)

    @staticmethod
    def _batch_norm(mods: list[nn.Module], h: Tensor) -> Tensor:
        """Batch norm over the N·C channels = each copy's over its C, with nn.BatchNorm's
        bookkeeping per copy (num_batches_tracked, momentum) and its running statistics
        written back to each copy's buffers."""
        first = mods[0]
        factor = 0.0 if first.momentum is None else first.momentum
        if first.training and first.track_running_stats:
            for m in mods:
                m.num_batches_tracked.add_(1)
            if first.momentum is None:
                factor = 1.0 / float(first.num_batches_tracked)
        mean = _cat([m.running_mean for m in mods])
        var = _cat([m.running_var for m in mods])
        training = first.training or mean is None
        y = F.batch_norm(h, mean, var, _cat([m.weight for m in mods]),
                         _cat([m.bias for m in mods]), training, factor, first.eps)
        if training and mean is not None:
            c = first.num_features
            with torch.no_grad():
                for i, m in enumerate(mods):
                    m.running_mean.copy_(mean[i * c:(i + 1) * c])
                    m.running_var.copy_(var[i * c:(i + 1) * c])
        return y


def _stages(model: nn.Module) -> list[nn.Module | None]:
    """A stack's modules in the order they run, None where it flattens."""
    if isinstance(model, TableNet):
        return [*model.features, None, *model.classifier]
    return [None, *model.classifier]  # MLP


def stack_problem(model: nn.Module) -> str | None:
    """Why the network cannot be packed (None: it can): a plain conv/fc stack of known
    modules (`TableNet`, `MLP`), with zero padding; converted or not (asymbp.convert swaps
    every Linear/Conv2d for its asymmetric subclass)."""
    key = getattr(model, "model_key", type(model).__name__)
    if type(model) not in (TableNet, MLP):
        return f"network {key} is not a plain conv/fc stack (residual blocks)"
    for m in _stages(model):
        if m is None or isinstance(m, (nn.Linear, *BATCHNORMS, *CHANNELWISE)):
            continue
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
            continue
        return f"network {key} has a {type(m).__name__} layer the packed model lacks"
    return None


# ---- what can be packed -----------------------------------------------------------------------


def cell_key(config: dict) -> str:
    """What the runs of one pack share: the config without the learning-rate multiplier and
    the seed (the sweep groups its runs by this)."""
    from .sweep.plan import canonical_config  # the run key's canonical form

    return canonical_config({k: v for k, v in config.items() if k not in PACK_FREE})


def pack_problem(cfg: TrainConfig) -> str | None:
    """Why runs of this config cannot be trained packed (None: they can), in a few words.

    Schemes: DFA (`direct`: each layer's error comes from the output, not through the next
    layer) and WM (`mirrored`: separate mirror steps) are not packed; every scheme that sends
    the error back through V (fixed, redrawn, learned: KP, PFA) is. PFA's fc layers then form
    V = B·R (the factored backward of `PFALinearFunction` is the same gradient, rounded
    differently).
    """
    spec = check_config(cfg)
    from .feedback import resolve

    cls, _ = resolve(spec.scheme_name)  # brSF-25 is brSF
    if cls.direct:
        return f"scheme {cls.name} sends the output error to every layer directly"
    if cls.mirrored:
        return f"scheme {cls.name} learns V in mirror steps between training steps"
    if cfg.compile:
        return "torch.compile is not supported by the packed model"
    if cfg.augment != "none":
        return f"augmentation ({cfg.augment}) is not supported by the packed model"
    if cfg.amp != "fp32":
        return f"precision {cfg.amp} is not supported by the packed model"
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        return "a data-parallel (torchrun) run is not packed"
    return None


def packable_schemes() -> list[str]:
    """The registered schemes `pack_problem` accepts (DFA and WM are not among them)."""
    from .feedback import SCHEMES

    return [name for name, cls in SCHEMES.items() if not (cls.direct or cls.mirrored)]


# ---- the trainer ------------------------------------------------------------------------------


class _Copy:
    """One run of the pack: what `train()` keeps in its locals."""

    def __init__(self, cfg: TrainConfig, checkpoint, tensors, spec, device):
        self.cfg, self.spec = cfg, spec
        self.execution = Execution(cfg, checkpoint)
        torch.manual_seed(cfg.seed)  # as train(): the initialisation comes from the seed
        self.model = self.execution.memory_format(build_model(cfg, spec, tensors).to(device))
        self.optimizer = run_optimizer(cfg, spec, self.model)
        self.generators = run_generators(cfg)
        self.progress: Progress = self.execution.resume(self.model, self.optimizer,
                                                        self.generators)
        # torch's global RNG as this run alone would have it (saved in its checkpoint)
        self.torch_rng = torch.random.get_rng_state()
        self.lr_milestones = parse_milestones(cfg.lr_milestones)

    @property
    def finished(self) -> bool:
        return (self.progress.diverged_epoch is not None
                or self.progress.next_epoch > int(self.cfg.epochs))

    def save(self) -> None:
        rng = torch.random.get_rng_state()
        torch.random.set_rng_state(self.torch_rng)
        try:
            self.execution.save(self.model, self.optimizer, self.generators, self.progress)
        finally:
            torch.random.set_rng_state(rng)


def train_packed(configs: list[TrainConfig | dict], *,
                 checkpoints: list[str | os.PathLike | None] | None = None,
                 data: datasets.Dataset | None = None,
                 on_epoch: Callable[[int, dict], None] | None = None,
                 on_start: Callable[[int, dict], None] | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """Train the runs of one cell together; each result is the one `train()` gives alone.

    Arguments:
        configs: `TrainConfig`s or dicts that differ only in `lr_mult` and `seed`.
        checkpoints: one path (or None) per config, in `train()`'s format: a killed pack
            resumes packed or one by one, each copy from its own last epoch.
        data: an already loaded dataset (skips loading).
        on_epoch: `on_epoch(i, row)` as each copy's epoch ends.
        on_start: `on_start(i, {"device", "first_epoch"})` once per copy, before training.
        log: where the one line goes when the runs cannot be packed (default: nowhere).

    Returns:
        `train()`'s result dict of each config, in order.
    """
    cfgs = [TrainConfig.from_dict(c) if isinstance(c, dict) else c for c in configs]
    checkpoints = list(checkpoints) if checkpoints is not None else [None] * len(cfgs)
    if len(checkpoints) != len(cfgs):
        raise AsymbpError(f"train_packed got {len(cfgs)} configs but {len(checkpoints)} "
                          "checkpoint paths; give one path (or None) per config")
    if not cfgs:
        return []
    specs = [check_config(c) for c in cfgs]
    keys = {cell_key(c.to_dict()) for c in cfgs}
    if len(keys) > 1:
        raise AsymbpError("train_packed packs runs that differ only in lr_mult and seed; these "
                          "configs differ in more (group them by asymbp.packed.cell_key)")
    problem = pack_problem(cfgs[0]) if len(cfgs) > 1 else "a single run"
    if problem is None:
        ds = data if data is not None else datasets.load(
            cfgs[0].dataset, cfgs[0].data_dir, seed=cfgs[0].data_seed,
            synthetic=cfgs[0].synthetic)
        problem = _network_problem(cfgs[0], specs[0], ds)
    if problem is not None:
        if log is not None and len(cfgs) > 1:
            log(f"not packed ({problem}): {len(cfgs)} runs one by one")
        from .train import train

        return [train(c, checkpoint=p, data=data,
                      on_epoch=None if on_epoch is None else (lambda row, i=i: on_epoch(i, row)),
                      on_start=None if on_start is None else (lambda info, i=i: on_start(i, info)))
                for i, (c, p) in enumerate(zip(cfgs, checkpoints))]
    if log is not None:
        log(f"{len(cfgs)} runs trained as one packed model")
    return _train_packed(cfgs, specs, checkpoints, ds, on_epoch, on_start)


def _network_problem(cfg: TrainConfig, spec, ds) -> str | None:
    """Whether the network can be packed, from one copy built on the meta device."""
    key = cfg.model or ds.model
    from . import models

    shape = tuple(ds.x_train.shape[1:])
    with torch.device("meta"):
        size = {"image_size": shape[1]} if len(shape) == 3 else {}
        model = models.build(key, ds.num_classes, in_channels=shape[0], bn=spec.bn, **size)
    return stack_problem(model)


def _train_packed(cfgs, specs, checkpoints, ds, on_epoch, on_start) -> list[dict]:
    probe = Execution(cfgs[0])  # the copies' device and memory format (each its own later)
    device, spec = probe.device, specs[0]
    tensors = prepare_data(cfgs[0], device, ds)  # the same for every copy (data_seed, split)
    check_model_fit(cfgs[0], tensors)
    tensors = tensors.with_inputs(probe.memory_format)
    copies = [_Copy(c, p, tensors, spec, device) for c, p in zip(cfgs, checkpoints)]
    for i, c in enumerate(copies):
        if on_start is not None and not c.finished:
            on_start(i, {"device": str(device), "first_epoch": c.progress.next_epoch})

    next_batch = batch_schedule(cfgs[0])
    n = len(tensors.x_train)
    epochs = int(cfgs[0].epochs)
    first_epoch = min((c.progress.next_epoch for c in copies if not c.finished), default=1)
    for epoch in range(first_epoch, epochs + 1):
        # a copy resumed from an older checkpoint than the others catches up first
        active = [i for i, c in enumerate(copies)
                  if not c.finished and c.progress.next_epoch == epoch]
        if not active:
            continue
        t0 = time.perf_counter()
        bs = next_batch(epoch)
        rows = _train_epoch([copies[i] for i in active], tensors, epoch, bs, n)
        # The pack's wall time, shared evenly: each copy's `seconds` is its share.
        share = (time.perf_counter() - t0) / len(active)
        for i, row in zip(active, rows):
            c = copies[i]
            t1 = time.perf_counter()
            _finish_epoch(c, row, tensors, bs, epoch)
            row["seconds"] = share + (time.perf_counter() - t1)
            c.progress.add(row)
            c.save()  # before the epoch is streamed, as train()
            if on_epoch is not None:
                on_epoch(i, row)

    results = []
    for c in copies:
        c.execution.close()
        result = summarize(c.cfg, c.spec, c.progress.history, c.progress.diverged_epoch,
                           c.progress.elapsed, c.model)
        result["device"] = str(device)
        results.append(result)
    return results


def _train_epoch(copies: list[_Copy], tensors, epoch: int, bs: int, n: int) -> list[dict]:
    """One epoch of the active copies, stepped together; each copy's row so far."""
    N = len(copies)
    device = tensors.x_train.device
    lrs = []
    for c in copies:
        lr = lr_at(epoch, int(c.cfg.epochs), c.cfg.base_lr * c.cfg.lr_mult, c.lr_milestones)
        set_epoch_hyperparameters(c.optimizer, lr, weight_decay_at(epoch, c.cfg),
                                  feedback_weight_decay_at(epoch, c.cfg))
        c.model.train()
        lrs.append(lr)
    perms = [torch.randperm(n, generator=c.generators["data_gen"]).to(device) for c in copies]
    shared = all(torch.equal(perms[0], p) for p in perms[1:])  # one seed: one batch for all
    net = PackedNet([c.model for c in copies])
    loss_sum = torch.zeros(N, device=device)
    wrong = torch.zeros(N, dtype=torch.long, device=device)
    mean = copies[0].cfg.loss == "mean"
    x_all, y_all = tensors.x_train, tensors.y_train
    for i in range(0, n, bs):
        if shared:
            idx = perms[0][i:i + bs]
            xb, yb = x_all[idx], y_all[idx].unsqueeze(1).expand(-1, N)  # (B,), (B, N)
        else:
            idxs = [p[i:i + bs] for p in perms]
            xb = torch.cat([x_all[j] for j in idxs], 1)  # (B, N·C, H, W) / (B, N·D)
            yb = torch.stack([y_all[j] for j in idxs], 1)  # (B, N)
        out = net(xb, shared)  # (B, N, classes)
        # per copy: the sum over the batch (or the mean), as train(); the copies' parameters
        # are disjoint, so the gradient of the sum is each copy's own
        losses = F.cross_entropy(out.float().transpose(1, 2), yb, reduction="none").sum(0)
        objective = (losses / len(yb)).sum() if mean else losses.sum()
        for c in copies:
            c.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        for c in copies:
            c.optimizer.step()
            if c.spec.weight_norm:
                renormalize(c.model)
        loss_sum += losses.detach()
        wrong += (out.detach().argmax(2) != yb).sum(0)
    loss_sum, wrong = loss_sum.tolist(), wrong.tolist()
    return [{"epoch": epoch, "lr": lrs[k], "batch_size": bs, "train_loss": loss_sum[k] / n,
             "train_error": 100.0 * wrong[k] / n} for k in range(N)]


def _finish_epoch(c: _Copy, row: dict, tensors, bs: int, epoch: int) -> None:
    """train()'s end of an epoch on the copy's own model: health, the BN pass, evaluation,
    alignment (or the diverged row)."""
    cfg = c.cfg
    if healthy(c.model, row["train_loss"], cfg.diverge_loss):
        if cfg.bn_stats == "paper":
            refresh_bn_stats(c.model, tensors.x_train, bs, cfg.bn_stat_batches,
                             cfg.bn_stat_alpha, c.generators["stat_gen"])
        row.update(evaluate(c.model, tensors, c.execution))
        if cfg.alignment and asym_layers(c.model):
            row["alignment"] = epoch_alignment(c.model, tensors, cfg.batch_size)
    else:
        c.progress.diverged_epoch = epoch
        row.update(test_error=math.nan, diverged=True)


def group_cells(configs: list[dict], size: int) -> list[list[int]]:
    """Indices of `configs` grouped into packs of at most `size` runs of one cell (the same
    `cell_key`), in the order the configs come; `size` <= 1: one run per group."""
    if size <= 1:
        return [[i] for i in range(len(configs))]
    by_cell: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        by_cell.setdefault(cell_key(c), []).append(i)
    groups = []
    for idx in by_cell.values():
        groups += [idx[j:j + size] for j in range(0, len(idx), size)]
    return sorted(groups, key=lambda g: g[0])


assert set(PACK_FREE) <= set(PER_RUN)  # a pack's copies differ only in per-run fields
