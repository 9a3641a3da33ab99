"""One training run (DESIGN §3–6): a config in, per-epoch metrics out.

`train(config)` is the paper's recipe and reads top to bottom in the order a run happens:

1. load the data, hold out a validation split (honest protocol), normalise with the training
   set's per-channel mean and std, put everything on the device as tensors (a streamed
   dataset, ImageNet: lazy splits whose batches loader workers decode, `streamed_data`);
2. build the network (the dataset's Table-1 network by default), convert it to the method's
   feedback scheme, freeze layers for Experiment C2;
3. make the method's optimizer (SGD or Batch Manhattan) over every trainable parameter;
4. for each epoch: set the learning rate (`lr_at`: base for the first 50/65 of the run, base/10
   to 60/65, base/100 after; or at `lr_milestones`) and weight decay (`wd_milestones`),
   train on mini-batches drawn by index permutation (augmented, with `augment`), refresh the
   test-time BN statistics (paper protocol: 20 training batches, EMA α = 0.05), evaluate,
   measure the alignment, record the epoch's metrics;
5. a run diverges, and ends, at the first epoch whose mean per-example training loss is NaN,
   inf or above `diverge_loss` (default 1e4: chance level is ln C, 2.3 for 10 classes), or
   whose weights are no longer finite; its test error is then NaN.

Where and how it executes — the device, NHWC memory, data-parallel processes, torch.compile,
the checkpoint — is `asymbp.execution`'s, which the recipe calls at a few points. Nothing here
knows about grids, processes or storage; `on_epoch` streams each epoch's metrics and
`checkpoint` (a path) makes the run resumable from its last finished epoch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import augment as aug
from . import data as datasets
from . import metrics
from . import models
from ._provenance import provenance
from .config import (TrainConfig, check_config, parse_batch_schedule, parse_betas,
                     parse_feedback_weight_decay, parse_milestones)
from .convert import convert
from .errors import AsymbpError
from .execution import Execution
from .feedback import MirrorSchedule
from .layers import asym_layers, renormalize
from .methods import MethodSpec
from .optim import make_optimizer

# TrainConfig is asymbp.config's, re-exported: `asymbp.train.TrainConfig` is public (DESIGN §9).
__all__ = ["TrainConfig", "train", "lr_at", "paper_milestones", "at_milestones",
           "weight_decay_at", "batch_schedule", "feedback_weight_decay_at",
           "prepare_data", "streamed_data", "epoch_batches", "resized", "resized_shape",
           "augmenter", "honest_split", "build_model", "xavier_init_", "refresh_bn_stats",
           "evaluate", "error_rate", "epoch_alignment", "summarize"]


# ---- the schedules ------------------------------------------------------------------------


def paper_milestones(epochs: int) -> list[tuple[int, float]]:
    """The paper's step schedule as milestones, scaled to the run length: /10 after 50/65 of
    the run, /10 again after 60/65."""
    return [(round(epochs * 50 / 65), 0.1), (round(epochs * 60 / 65), 0.1)]


def at_milestones(epoch: int, base: float, milestones: list[tuple[int, float]]) -> float:
    """`base` times every factor γ whose milestone m has passed (m < epoch, counted from 1):
    torch's MultiStepLR stepped once per epoch. It divides by 1/γ rather than multiplying by γ
    so that /10 steps give base/10 and base/100 as printed (0.1 x 0.1 is not 0.01 in floats)."""
    return base / math.prod(1 / g for m, g in milestones if m < epoch)


def lr_at(epoch: int, epochs: int, base: float,
          milestones: list[tuple[int, float]] | None = None) -> float:
    """The learning rate of `epoch` (from 1): at `milestones` (lr_milestones), or by default
    the paper's step schedule scaled to the run length."""
    return at_milestones(epoch, base, paper_milestones(epochs) if milestones is None
                         else milestones)


def weight_decay_at(epoch: int, cfg: TrainConfig) -> float:
    """The weights' decay in `epoch`: `weight_decay`, stepped at `wd_milestones` if given."""
    return at_milestones(epoch, cfg.weight_decay,
                         parse_milestones(cfg.wd_milestones, "weight-decay") or [])


def batch_schedule(cfg: TrainConfig) -> Callable[[int], int]:
    """epoch -> batch size, from `batch_schedule` ("100:3,500") or the fixed `batch_size`."""
    steps = parse_batch_schedule(cfg.batch_schedule)
    if not steps:
        return lambda epoch: int(cfg.batch_size)

    def at(epoch: int) -> int:
        for b, last in steps:
            if epoch <= last:
                return b
        return steps[-1][0]

    return at


def feedback_weight_decay_at(epoch: int, cfg: TrainConfig) -> float | None:
    """The weight decay of learned feedback (KP, PFA) in `epoch`: Li & Benna's large decay in
    the first epoch, a small one after ("5e-3,1e-4"); None: the weights' decay throughout."""
    schedule = parse_feedback_weight_decay(cfg.feedback_weight_decay)
    if schedule is None:
        return None
    return schedule[0] if epoch == 1 else schedule[1]


# ---- the recipe ---------------------------------------------------------------------------


def train(config: TrainConfig | dict, *, on_epoch: Callable[[dict], None] | None = None,
          checkpoint: str | os.PathLike | None = None,
          data: datasets.Dataset | None = None,
          on_start: Callable[[dict], None] | None = None) -> dict:
    """Train one run and return its metrics.

    Arguments:
        config: a `TrainConfig` or a dict of its fields.
        on_epoch: called with each epoch's metrics dict as soon as the epoch ends.
        checkpoint: a file path; the run saves its state there after every epoch and, if the
            file exists, resumes from it (the finished epochs are not redone).
        data: an already loaded dataset (skips loading `config.dataset`).
        on_start: called once every check has passed (the checkpoint's too) and the first
            epoch is about to run, with `{"device": ..., "first_epoch": ...}`.

    Returns:
        A dict: `config`, `method` (canonical), `test_error` (final, %), `best_test_error` (%),
        `best_epoch`, `val_error` / `honest_test_error` (honest protocol), `diverged` (bool),
        `diverged_epoch`, `epochs` (a list of per-epoch dicts), `params`, `seconds`, provenance.
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    spec = check_config(cfg)
    execution = Execution(cfg, checkpoint)  # the device: one this machine lacks fails here
    device, next_batch = execution.device, batch_schedule(cfg)
    lr_milestones = parse_milestones(cfg.lr_milestones)  # None: the paper's schedule

    # -- data, model, optimizer ---------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    tensors = prepare_data(cfg, device, data)
    check_model_fit(cfg, tensors)
    tensors = tensors.with_inputs(execution.memory_format)
    model = execution.memory_format(build_model(cfg, spec, tensors).to(device))
    optimizer = run_optimizer(cfg, spec, model)
    step_model = execution.wrap(model)  # what the training steps call (DDP, compiled)
    generators = run_generators(cfg)
    data_gen, stat_gen = generators["data_gen"], generators["stat_gen"]
    augment = augmenter(cfg, tensors)  # None without augmentation
    if augment is not None:  # on the device, like the batches; in the checkpoint only when
        # used, so that the checkpoints of runs without augmentation keep resuming
        generators["aug_gen"] = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    progress = execution.resume(model, optimizer, generators)
    start_epoch = progress.next_epoch
    if on_start is not None and execution.main:
        on_start({"device": str(device), "first_epoch": start_epoch})

    n = len(tensors.x_train)
    mirrors = MirrorSchedule.from_config(model, cfg)  # WM's mirror steps (none without WM)
    if start_epoch == 1:
        mirrors.warmup()
    for epoch in range(start_epoch, int(cfg.epochs) + 1):
        if progress.diverged_epoch is not None:
            break
        t0 = time.perf_counter()
        lr = lr_at(epoch, int(cfg.epochs), cfg.base_lr * cfg.lr_mult, lr_milestones)
        bs = next_batch(epoch)
        set_epoch_hyperparameters(optimizer, lr, weight_decay_at(epoch, cfg),
                                  feedback_weight_decay_at(epoch, cfg))

        # -- train one epoch: no host synchronisation inside the loop -------------------------
        model.train()
        loss_sum = torch.zeros((), device=device)
        wrong = torch.zeros((), dtype=torch.long, device=device)
        perm = torch.randperm(n, generator=data_gen)
        for xb, yb, whole in epoch_batches(tensors, perm, bs, epoch, execution, augment,
                                           generators.get("aug_gen"), cfg.augment != "none"):
            with execution.autocast():
                out = step_model(xb)
                # The sum over the batch, so the paper's learning rates apply as printed.
                loss = F.cross_entropy(out.float(), yb, reduction="sum")
            # loss "mean": over the whole mini-batch (all processes' shares), BioTorch's
            objective = loss if cfg.loss == "sum" else loss / whole
            optimizer.zero_grad(set_to_none=True)
            execution.backward(objective)
            optimizer.step()
            if spec.weight_norm:
                renormalize(model)
            mirrors.after_step()
            loss_sum += loss.detach()
            wrong += (out.detach().argmax(1) != yb).sum()
        execution.all_reduce_(loss_sum, wrong)  # a data-parallel run's epoch: all processes'
        row = {"epoch": epoch, "lr": lr, "batch_size": bs, "train_loss": loss_sum.item() / n,
               "train_error": 100.0 * wrong.item() / n}

        # -- test-time BN statistics, evaluation, alignment -----------------------------------
        if healthy(model, row["train_loss"], cfg.diverge_loss):
            if cfg.bn_stats == "paper":
                refresh_bn_stats(model, tensors.x_train, bs, cfg.bn_stat_batches,
                                 cfg.bn_stat_alpha, stat_gen)
            row.update(evaluate(model, tensors, execution))  # test_error (and val_error)
            if cfg.alignment and asym_layers(model):
                row["alignment"] = epoch_alignment(model, tensors, cfg.batch_size)
        else:
            progress.diverged_epoch = epoch
            row.update(test_error=math.nan, diverged=True)
        row["seconds"] = time.perf_counter() - t0
        progress.add(row)
        # Saved before the epoch is streamed: whatever a listener has seen is also on disk.
        execution.save(model, optimizer, generators, progress)
        if on_epoch is not None and execution.main:
            on_epoch(row)

    del step_model  # a DDP wrapper goes before its process group (Execution.close)
    execution.close()
    result = summarize(cfg, spec, progress.history, progress.diverged_epoch, progress.elapsed,
                       model)
    result["device"] = str(device)  # the one used (config["device"] may say auto)
    return result


# ---- the steps of the recipe -------------------------------------------------------------


@dataclass
class Tensors:
    """The run's data on the device: train, optional validation, test."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Tensor | None
    y_val: Tensor | None
    num_classes: int
    model: str
    black: Tensor | None = None  # (1, C, 1, 1): a raw 0 pixel after normalisation

    def with_inputs(self, fn: Callable[[Tensor], Tensor]) -> "Tensors":
        """The same data with `fn` applied to each input tensor (x_train, x_val, x_test)."""
        def put(x):  # a streamed split applies `fn` to each batch it makes
            return x.with_layout(fn) if streamed(x) else fn(x)

        return replace(self, x_train=put(self.x_train), x_test=put(self.x_test),
                       x_val=None if self.x_val is None else put(self.x_val))


def streamed(x) -> bool:
    """Whether `x` is a streamed split (`asymbp.data.stream.StreamedImages`), not a tensor."""
    return getattr(x, "batches", None) is not None and not torch.is_tensor(x)


def epoch_batches(tensors: Tensors, perm: Tensor, bs: int, epoch: int, execution: Execution,
                  augment, aug_gen, train_transform: bool):
    """The epoch's mini-batches in the order `perm` (CPU): (xb, yb, the whole mini-batch's
    size), xb and yb this process's share of it, on the device. In memory: indexed and
    augmented on the device; streamed: decoded by the loader's workers, each example cropped by
    the training transform (`train_transform`, else the test one) of its (seed, epoch, index)."""
    n = len(perm)
    if streamed(tensors.x_train):
        shares = [execution.shard(perm[i:i + bs]) for i in range(0, n, bs)]
        sizes = [min(bs, n - i) for i in range(0, n, bs)]
        for (xb, yb), whole in zip(tensors.x_train.batches(shares, epoch, train_transform),
                                   sizes):
            yield xb, yb, whole
        return
    perm = perm.to(execution.device)
    for i in range(0, n, bs):
        batch = perm[i:i + bs]
        idx = execution.shard(batch)  # this process's share of the mini-batch
        xb, yb = tensors.x_train[idx], tensors.y_train[idx]
        if augment is not None:
            xb = augment(xb, aug_gen)
        yield xb, yb, len(batch)


def inputs(x, chunks: list):
    """`x[c]` for each chunk `c` (an index tensor or a slice) of inputs `x`; a streamed `x`
    decodes them in its loader's workers."""
    if streamed(x):
        for xb, _ in x.batches(chunks):
            yield xb
    else:
        for c in chunks:
            yield x[c]


def prepare_data(cfg: TrainConfig, device: torch.device, ds: datasets.Dataset | None = None
                 ) -> Tensors:
    """Load, split (honest protocol), normalise per channel with training statistics, move."""
    if ds is None:
        ds = datasets.load(cfg.dataset, cfg.data_dir, seed=cfg.data_seed,
                           synthetic=cfg.synthetic)  # validated there
    else:
        datasets.validate(ds)  # a dataset built by the caller gets the same checks
    if getattr(ds, "streamed", False):
        return streamed_data(cfg, device, ds)
    x_tr, y_tr, x_te = ds.x_train, ds.y_train, ds.x_test
    if cfg.resize is not None:  # once, before the statistics: the network sees these images
        x_tr, x_te = resized(x_tr, cfg.resize, ds.key), resized(x_te, cfg.resize, ds.key)
    x_val = y_val = None
    split = honest_split(cfg, ds)
    if split is not None:
        val, tr = split
        x_val, y_val, x_tr, y_tr = x_tr[val], y_tr[val], x_tr[tr], y_tr[tr]
    axes = (0, 2, 3) if x_tr.ndim == 4 else (0,)
    mean = x_tr.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std = x_tr.std(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std[std < 1e-8] = 1.0

    def put(x, y):
        if x is None:
            return None, None
        xt = torch.from_numpy(((x - mean) / std).astype(np.float32)).to(device)
        return xt, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)

    xt, yt = put(x_tr, y_tr)
    xs, ys = put(x_te, ds.y_test)
    xv, yv = put(x_val, y_val)
    black = torch.from_numpy(-mean / std).to(device) if x_tr.ndim == 4 else None
    return Tensors(xt, yt, xs, ys, xv, yv, ds.num_classes, ds.model, black)


def streamed_data(cfg: TrainConfig, device: torch.device, ds) -> Tensors:
    """A streamed dataset (ImageNet) as lazy splits (`asymbp.data.stream.StreamedImages`) with
    their labels on the device: images are decoded batch by batch, transformed by the loader
    (augment resized-crop-flip: the training crop; none: the test transform), normalised with
    the dataset's own mean and std. The honest protocol's validation images are training
    images under the test transform."""
    if cfg.resize is not None or cfg.augment == "crop-flip":
        raise AsymbpError(f"dataset {ds.key} is streamed: its loader crops {ds.crop}x{ds.crop} "
                          f"(training: random-resized crop + flip; test: resize {ds.resize}, "
                          "centre crop); leave out resize and use augment resized-crop-flip or "
                          "none")
    workers = (cfg.loader_workers if cfg.loader_workers is not None
               else min(8, os.cpu_count() or 1))
    split = honest_split(cfg, ds)
    val, tr = split if split is not None else (None, None)

    def images(name, idx):
        return ds.images(name, idx, seed=cfg.seed, device=device, workers=workers)

    xt, xs = images("train", tr), images("test", None)
    xv = None if val is None else images("train", val)
    return Tensors(xt, xt.labels(), xs, xs.labels(), xv, None if xv is None else xv.labels(),
                   ds.num_classes, ds.model)


def run_optimizer(cfg: TrainConfig, spec: MethodSpec, model: nn.Module):
    """The run's optimizer: the method's update rule over `param_groups(model)`, at the run's
    base learning rate (the epoch's comes from `set_epoch_hyperparameters`)."""
    return make_optimizer(spec.update, param_groups(model), lr=cfg.base_lr * cfg.lr_mult,
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          betas=parse_betas(cfg.betas), eps=cfg.eps)


def run_generators(cfg: TrainConfig) -> dict[str, torch.Generator]:
    """The run's generators under their checkpoint names: the batch order (`data_gen`) and the
    BN-statistics batches (`stat_gen`), seeded from the run's seed."""
    return {"data_gen": torch.Generator().manual_seed(cfg.seed),
            "stat_gen": torch.Generator().manual_seed(cfg.seed + 1)}


def resized(x: np.ndarray, size: int, key: str) -> np.ndarray:
    """Images (N, C, H, W) resized as torchvision's Resize(size) (`asymbp.augment.resize`), in
    chunks (a 60 000-image set is not copied into float64 or a second whole tensor at once)."""
    if x.ndim != 4:
        raise AsymbpError(f"resize {size} needs images, but dataset {key} holds vectors of "
                          f"shape {x.shape[1:]}; leave resize out (--resize) for it")
    chunks = [aug.resize(torch.from_numpy(np.ascontiguousarray(x[i:i + 4096], np.float32)),
                         size).numpy() for i in range(0, len(x), 4096)]
    return np.concatenate(chunks) if chunks else x.astype(np.float32)


def resized_shape(shape: tuple[int, ...], size: int | None) -> tuple[int, ...]:
    """An example's shape (C, H, W) after `resize` (what the network takes), without the data:
    the command line's check that the network fits, before anything is loaded to the device."""
    if size is None or len(shape) != 3:
        return tuple(shape)
    c, h, w = shape
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    return (c, new_long, size) if w <= h else (c, size, new_long)


def augmenter(cfg: TrainConfig, tensors: Tensors
              ) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    """The training batches' augmentation (xb, gen) -> xb, None for `augment="none"`.
    crop-flip pads with black (a raw 0 pixel, as torchvision pads before normalising);
    resized-crop-flip gives the images' own size."""
    if cfg.augment == "none" or streamed(tensors.x_train):  # streamed: the loader augments
        return None
    if tensors.x_train.ndim != 4:
        raise AsymbpError(f"augment {cfg.augment!r} needs images, but dataset {cfg.dataset} "
                          "holds vectors; use augment none")
    if cfg.augment == "crop-flip":
        return lambda xb, gen: aug.random_crop_flip(xb, 4, gen, fill=tensors.black)
    size = tuple(tensors.x_train.shape[2:])
    return lambda xb, gen: aug.random_resized_crop_flip(xb, size, gen=gen)


def honest_split(cfg: TrainConfig, ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(validation, training) indices of the training set under the honest protocol (seeded by
    `data_seed`; `val_size` examples, or the `val_fraction` of them; a `--synthetic` stand-in
    holds out val_size's share of the real training set), None under the paper's;
    the one-line error when no training example is left (cheap: the command line checks it
    before a run starts)."""
    if cfg.protocol != "honest":
        return None
    perm = np.random.default_rng(cfg.data_seed + 7919).permutation(len(ds.y_train))
    if cfg.val_size is not None:
        n_val, given = cfg.val_size, f"val_size {cfg.val_size}"
        full = datasets.synthetic_train_size(ds)
        if full is not None and len(perm) < full:
            # `--synthetic N` shrinks the training set: the split keeps the protocol's share
            # (BioTorch's 5k of 50k is 10 % of N), so a smoke test of an experiment still runs
            n_val = max(1, round(cfg.val_size * len(perm) / full))
            given += f" scaled to the synthetic {len(perm)} of {full}"
    else:
        n_val = max(1, int(round(len(perm) * cfg.val_fraction)))
        given = f"val_fraction {cfg.val_fraction}"
    if n_val >= len(perm):
        raise AsymbpError(
            f"dataset {ds.key}: the honest protocol holds out {n_val} of its {len(perm)} "
            f"training example(s) for validation ({given}), leaving none to train on; lower "
            "val_size / val_fraction (--val-size, --val-fraction), add training examples or "
            "use protocol paper"
        )
    return np.sort(perm[:n_val]), np.sort(perm[n_val:])


def build_model(cfg: TrainConfig, spec: MethodSpec, tensors: Tensors) -> nn.Module:
    """The network for this run, converted to the method's scheme, C2 layers frozen, its BN
    layers without running statistics under the paper's BN protocol."""
    key = cfg.model or tensors.model
    shape = tensors.x_train.shape[1:]  # (C, H, W) or (D,)
    affine = spec.bn_affine or cfg.bn_affine == "all"
    if len(shape) == 3:
        model = models.build(key, tensors.num_classes, in_channels=shape[0],
                             image_size=shape[1], bn=spec.bn, bn_affine=affine)
    else:
        model = models.build(key, tensors.num_classes, in_channels=shape[0], bn=spec.bn,
                             bn_affine=affine)
    if cfg.init == "xavier":
        xavier_init_(model)  # before convert: feedback made from W (uSF's sign(W)) follows it
    convert(model, spec.scheme_name, seed=cfg.seed, weight_norm=spec.weight_norm,
            **{k: v for k, v in spec.scheme_options.items() if k != "p"})
    freeze = spec.freeze if spec.freeze != "none" else cfg.freeze
    models.freeze(model, freeze)
    if cfg.bn_stats == "paper":
        for bn in bn_layers(model):
            bn.momentum = 0.0  # running stats come only from the post-epoch pass
    return model


@torch.no_grad()
def xavier_init_(model: nn.Module) -> None:
    """BioTorch's `init="xavier"`: every Linear and Conv2d weight Xavier-uniform, U(-a, a) with
    a = sqrt(6 / (fan_in + fan_out)), every bias 0 (jsalbert/biotorch,
    biotorch/layers/fa_constructor/linear.py and conv.py, `init_parameters`)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def check_model_fit(cfg: TrainConfig, tensors: Tensors) -> None:
    """The one-line error for a network that cannot take the dataset's inputs (a conv network
    on vectors, images smaller than its convolutions and pools), before it is built."""
    models.check_fit(cfg.model or tensors.model, tuple(tensors.x_train.shape[1:]), cfg.dataset)

def param_groups(model: nn.Module) -> list[dict]:
    """The optimizer's groups: the weights, and the learned feedback (KP, PFA) apart, so that
    its weight decay can follow its own schedule."""
    feedback = {id(p) for _, layer in asym_layers(model) for p in layer.feedback.parameters()}
    main = [p for p in model.parameters() if p.requires_grad and id(p) not in feedback]
    fb = [p for p in model.parameters() if p.requires_grad and id(p) in feedback]
    groups = [{"params": main, "kind": "weights"}]
    if fb:
        groups.append({"params": fb, "kind": "feedback"})
    return groups


def set_epoch_hyperparameters(optimizer, lr: float, weight_decay: float,
                              feedback_weight_decay: float | None) -> None:
    """The epoch's learning rate and weight decay for every group; the feedback's weight decay
    instead where it has its own schedule."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay
        if feedback_weight_decay is not None and group.get("kind") == "feedback":
            group["weight_decay"] = feedback_weight_decay


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def healthy(model: nn.Module, train_loss: float, diverge_loss: float) -> bool:
    """Not diverged. Diverged: a NaN/inf loss, a finite one above `diverge_loss` (blown-up
    weights whose logits are far apart: not learning, whatever the error rate says), or
    non-finite weights (one host synchronisation for all of them)."""
    return (math.isfinite(train_loss) and train_loss <= diverge_loss
            and bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()))


@torch.no_grad()
def refresh_bn_stats(model: nn.Module, x: Tensor, batch: int, n_batches: int, alpha: float,
                     gen: torch.Generator) -> None:
    """The paper's test-time BN statistics: `n_batches` training batches in training mode,
    running mean/var as EMAs with factor `alpha`, weights untouched."""
    bns = bn_layers(model)
    if not bns:
        return
    was = model.training
    model.train()
    for bn in bns:
        bn.momentum = alpha
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    chunks = [perm[i * batch:(i + 1) * batch]
              for i in range(min(n_batches, math.ceil(len(x) / batch)))]
    for xb in inputs(x, chunks):
        model(xb)
    for bn in bns:
        bn.momentum = 0.0  # training batches leave the running statistics alone
    model.train(was)


@torch.no_grad()
def error_rate(model: nn.Module, x: Tensor, y: Tensor, batch: int, amp) -> float:
    """Classification error in % (eval mode); NaN for no examples (an error rate of nothing is
    not 0 %: `summarize` then reports no best epoch rather than a perfect one)."""
    if len(x) == 0:
        return math.nan
    was = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.long, device=x.device)
    starts = range(0, len(x), batch)
    for i, xb in zip(starts, inputs(x, [slice(i, i + batch) for i in starts])):
        with amp():
            out = model(xb)
        wrong += (out.argmax(1) != y[i:i + batch]).sum()
    model.train(was)
    return 100.0 * wrong.item() / len(x)


def evaluate(model: nn.Module, tensors: Tensors, execution: Execution) -> dict:
    """The epoch's test error (and validation error, honest protocol), in %."""
    batch, autocast = execution.eval_batch_size, execution.autocast
    out = {"test_error": error_rate(model, tensors.x_test, tensors.y_test, batch, autocast)}
    if tensors.x_val is not None:
        out["val_error"] = error_rate(model, tensors.x_val, tensors.y_val, batch, autocast)
    return out


def epoch_alignment(model: nn.Module, tensors: Tensors, batch_size: int) -> list[dict]:
    """The epoch's alignment rows, one per asymmetric layer: the V–W angle and the angle between
    its error signal and backprop's on the first `batch_size` training examples."""
    rows = {r["layer"]: r for r in metrics.layer_alignment(model)}
    if all(layer.feedback.symmetric for _, layer in asym_layers(model)):
        for r in rows.values():
            r["grad_angle"] = 0.0  # V = W everywhere: the error signals are backprop's
        return list(rows.values())
    was = model.training
    model.eval()
    n = min(len(tensors.x_train), batch_size)
    for r in metrics.error_signal_alignment(model, tensors.x_train[:n], tensors.y_train[:n]):
        rows[r["layer"]]["grad_angle"] = r["grad_angle"]
    model.train(was)
    return list(rows.values())


def summarize(cfg: TrainConfig, spec: MethodSpec, history: list[dict], diverged_epoch,
              elapsed: float, model: nn.Module | None = None) -> dict:
    """The result dict of a run from its per-epoch history."""
    tests = [(r["test_error"], r["epoch"]) for r in history if math.isfinite(r["test_error"])]
    best_test, best_epoch = min(tests) if tests else (math.nan, None)
    out = {
        "config": cfg.to_dict(),
        "method": spec.name,
        "scheme": spec.scheme,
        "test_error": history[-1]["test_error"] if history else math.nan,
        "best_test_error": best_test,
        "best_epoch": best_epoch,
        "diverged": diverged_epoch is not None,
        "diverged_epoch": diverged_epoch,
        "epochs": history,
        "seconds": elapsed,
        **provenance(),
    }
    vals = [(r["val_error"], r["epoch"], r["test_error"]) for r in history
            if math.isfinite(r.get("val_error", math.nan))]
    if vals:
        best_val, val_epoch, test_there = min(vals)
        out.update(val_error=best_val, val_epoch=val_epoch, honest_test_error=test_there)
    if model is not None:
        out["params"] = sum(p.numel() for p in model.parameters())
    return out
