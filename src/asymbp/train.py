"""One training run (DESIGN §3–6): a config in, per-epoch metrics out.

`train(config)` reads top to bottom in the order a run happens:

1. load the data, hold out a validation split (honest protocol), normalise with the training
   set's per-channel mean and std, put everything on the device as tensors;
2. build the network (the dataset's Table-1 network by default), convert it to the method's
   feedback scheme, freeze layers for Experiment C2;
3. make the method's optimizer (SGD or Batch Manhattan) over every trainable parameter;
4. for each epoch: set the learning rate (base for the first 50/65 of the run, base/10 to 60/65,
   base/100 after), train on mini-batches drawn by index permutation, refresh the test-time BN
   statistics (paper protocol: 20 training batches, EMA α = 0.05), evaluate, record metrics;
5. a run diverges, and ends, at the first epoch whose mean per-example training loss is NaN,
   inf or above `diverge_loss` (default 1e4: chance level is ln C, 2.3 for 10 classes), or
   whose weights are no longer finite; its test error is then NaN.

Nothing here knows about grids, processes or storage; `on_epoch` streams each epoch's metrics
and `checkpoint` (a path) makes the run resumable from its last finished epoch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as datasets
from . import metrics as M
from . import models
from ._provenance import provenance
from .config import (RESUME_FREE, TrainConfig, check_config, parse_batch_schedule,
                     parse_feedback_weight_decay)
from .convert import convert
from .distributed import data_parallel, local_device
from .errors import AsymbpError
from .feedback import mirror_step
from .layers import asym_layers, renormalize
from .methods import MethodSpec
from .optim import make_optimizer


def _compiled(model: nn.Module, mode: bool | str) -> nn.Module:
    if not mode:
        return model
    return torch.compile(model, mode=None if mode in (True, "default") else mode)


def lr_at(epoch: int, epochs: int, base: float) -> float:
    """The paper's step schedule scaled to the run length (epoch counts from 1)."""
    if epoch <= round(epochs * 50 / 65):
        return base
    if epoch <= round(epochs * 60 / 65):
        return base / 10
    return base / 100


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


def feedback_wd(cfg: TrainConfig) -> tuple[float, float] | None:
    return parse_feedback_weight_decay(cfg.feedback_weight_decay)


# ---- data ---------------------------------------------------------------------------------


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


def prepare_data(cfg: TrainConfig, device: torch.device, ds: datasets.Dataset | None = None
                 ) -> Tensors:
    """Load, split (honest protocol), normalise per channel with training statistics, move."""
    if ds is None:
        ds = datasets.load(cfg.dataset, cfg.data_dir, seed=cfg.data_seed)  # validated there
    else:
        datasets.validate(ds)  # a dataset built by the caller gets the same checks
    x_tr, y_tr = ds.x_train, ds.y_train
    x_val = y_val = None
    if cfg.protocol == "honest":
        rng = np.random.default_rng(cfg.data_seed + 7919)
        perm = rng.permutation(len(y_tr))
        n_val = max(1, int(round(len(perm) * cfg.val_fraction)))
        if n_val >= len(perm):
            raise AsymbpError(
                f"dataset {ds.key}: the honest protocol holds out {n_val} of its {len(perm)} "
                f"training example(s) for validation (val_fraction {cfg.val_fraction}), leaving "
                "none to train on; lower val_fraction (--val-fraction), add training examples "
                "or use protocol paper"
            )
        val, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
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
    xs, ys = put(ds.x_test, ds.y_test)
    xv, yv = put(x_val, y_val)
    return Tensors(xt, yt, xs, ys, xv, yv, ds.num_classes, ds.model)


def build_model(cfg: TrainConfig, spec: MethodSpec, data: Tensors) -> nn.Module:
    """The network for this run, converted to the method's scheme, C2 layers frozen."""
    key = cfg.model or data.model
    shape = data.x_train.shape[1:]  # (C, H, W) or (D,)
    if len(shape) == 3:
        model = models.build(key, data.num_classes, in_channels=shape[0], image_size=shape[1],
                             bn=spec.bn, bn_affine=spec.bn_affine)
    else:
        model = models.build(key, data.num_classes, in_channels=shape[0], bn=spec.bn,
                             bn_affine=spec.bn_affine)
    convert(model, spec.scheme_name, seed=cfg.seed, weight_norm=spec.weight_norm,
            **{k: v for k, v in spec.scheme_options.items() if k != "p"})
    freeze = spec.freeze if spec.freeze != "none" else cfg.freeze
    models.freeze(model, freeze)
    return model


def check_model_fit(cfg: TrainConfig, data: Tensors) -> None:
    """The one-line error for a network that cannot take the dataset's inputs (a conv network
    on vectors, images smaller than its convolutions and pools), before it is built."""
    models.check_fit(cfg.model or data.model, tuple(data.x_train.shape[1:]), cfg.dataset)


def _param_groups(model: nn.Module):
    feedback = {id(p) for _, layer in asym_layers(model) for p in layer.feedback.parameters()}
    main = [p for p in model.parameters() if p.requires_grad and id(p) not in feedback]
    fb = [p for p in model.parameters() if p.requires_grad and id(p) in feedback]
    groups = [{"params": main, "kind": "weights"}]
    if fb:
        groups.append({"params": fb, "kind": "feedback"})
    return groups


# ---- the run ------------------------------------------------------------------------------


def _bn_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def refresh_bn_stats(model: nn.Module, x: Tensor, batch: int, n_batches: int, alpha: float,
                     gen: torch.Generator) -> None:
    """The paper's test-time BN statistics: `n_batches` training batches in training mode,
    running mean/var as EMAs with factor `alpha`, weights untouched."""
    bns = _bn_layers(model)
    if not bns:
        return
    was = model.training
    model.train()
    for bn in bns:
        bn.momentum = alpha
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    for i in range(min(n_batches, math.ceil(len(x) / batch))):
        model(x[perm[i * batch:(i + 1) * batch]])
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
    for i in range(0, len(x), batch):
        with amp():
            out = model(x[i:i + batch])
        wrong += (out.argmax(1) != y[i:i + batch]).sum()
    model.train(was)
    return 100.0 * wrong.item() / len(x)


def _amp_context(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext


def train(config: TrainConfig | dict, *, on_epoch: Callable[[dict], None] | None = None,
          checkpoint: str | os.PathLike | None = None,
          data: datasets.Dataset | None = None) -> dict:
    """Train one run and return its metrics.

    Arguments:
        config: a `TrainConfig` or a dict of its fields.
        on_epoch: called with each epoch's metrics dict as soon as the epoch ends.
        checkpoint: a file path; the run saves its state there after every epoch and, if the
            file exists, resumes from it (the finished epochs are not redone).
        data: an already loaded dataset (skips loading `config.dataset`).

    Returns:
        A dict: `config`, `method` (canonical), `test_error` (final, %), `best_test_error` (%),
        `best_epoch`, `val_error` / `honest_test_error` (honest protocol), `diverged` (bool),
        `diverged_epoch`, `epochs` (a list of per-epoch dicts), `params`, `seconds`, provenance.
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    spec = check_config(cfg)
    device = torch.device(local_device(cfg.device))
    amp = _amp_context(cfg, device)
    next_batch = batch_schedule(cfg)
    fb_wd = feedback_wd(cfg)

    torch.manual_seed(cfg.seed)
    tensors = prepare_data(cfg, device, data)
    check_model_fit(cfg, tensors)
    model = build_model(cfg, spec, tensors).to(device)
    if cfg.channels_last and tensors.x_train.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
        for name in ("x_train", "x_test", "x_val"):
            x = getattr(tensors, name)
            if x is not None:
                setattr(tensors, name, x.contiguous(memory_format=torch.channels_last))
    dp = data_parallel(device)  # None unless run under torchrun / an initialised process group
    bns = _bn_layers(model)
    if cfg.bn_stats == "paper":
        for bn in bns:
            bn.momentum = 0.0  # running stats come only from the post-epoch pass
    optimizer = make_optimizer(spec.update, _param_groups(model), lr=cfg.base_lr * cfg.lr_mult,
                               momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    step_model = model if dp is None else dp.wrap(model)
    step_model = _compiled(step_model, cfg.compile)
    data_gen = torch.Generator().manual_seed(cfg.seed)  # batch order
    stat_gen = torch.Generator().manual_seed(cfg.seed + 1)  # BN-statistics batches
    history: list[dict] = []
    start_epoch, elapsed = 1, 0.0
    diverged_epoch = None

    ckpt = Path(checkpoint) if checkpoint else None
    state = _load_checkpoint(ckpt) if ckpt is not None else None
    if state is not None:
        _check_resume(ckpt, cfg, state.get("config"))
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            data_gen.set_state(state["data_gen"])
            stat_gen.set_state(state["stat_gen"])
            torch.random.set_rng_state(state["torch_rng"])
            history, elapsed = list(state["history"]), float(state["elapsed"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(ckpt, f"does not fit this run: {_first_line(err)}") from None
        diverged_epoch = state.get("diverged_epoch")
        start_epoch = len(history) + 1

    n = len(tensors.x_train)
    base = cfg.base_lr * cfg.lr_mult
    eval_batch = int(cfg.eval_batch_size or (250 if device.type == "cpu" else 1000))
    mirrored = any(getattr(l.feedback, "mirrored", False) for _, l in asym_layers(model))
    steps_done = 0
    if mirrored and start_epoch == 1:
        mirror_step(model, int(cfg.mirror_warmup))
    for epoch in range(start_epoch, int(cfg.epochs) + 1):
        if diverged_epoch is not None:
            break
        t0 = time.perf_counter()
        lr = lr_at(epoch, int(cfg.epochs), base)
        bs = next_batch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if fb_wd and group.get("kind") == "feedback":
                group["weight_decay"] = fb_wd[0] if epoch == 1 else fb_wd[1]

        # -- train one epoch: no host synchronisation inside the loop ---------------------
        model.train()
        loss_sum = torch.zeros((), device=device)
        wrong = torch.zeros((), dtype=torch.long, device=device)
        perm = torch.randperm(n, generator=data_gen).to(device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            if dp is not None:
                idx = dp.shard(idx)  # this rank's share of the mini-batch
            xb, yb = tensors.x_train[idx], tensors.y_train[idx]
            with amp():
                out = step_model(xb)
                # The sum over the batch, so the paper's learning rates apply as printed.
                loss = F.cross_entropy(out.float(), yb, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (loss if dp is None else loss * dp.loss_scale).backward()
            optimizer.step()
            if spec.weight_norm:
                renormalize(model)
            steps_done += 1
            if mirrored and steps_done % int(cfg.mirror_every) == 0:
                mirror_step(model, int(cfg.mirror_steps))  # WM: V learns from noise, off-task
            loss_sum += loss.detach()
            wrong += (out.detach().argmax(1) != yb).sum()
        if dp is not None:
            dp.all_reduce_(loss_sum, wrong)
        train_loss = loss_sum.item() / n
        # Diverged: a NaN/inf loss, a finite one above `diverge_loss` (blown-up weights whose
        # logits are far apart: not learning, whatever the error rate), or non-finite weights
        # (one host synchronisation for all of them).
        healthy = (math.isfinite(train_loss) and train_loss <= cfg.diverge_loss
                   and bool(torch.stack([torch.isfinite(p).all()
                                         for p in model.parameters()]).all()))

        # -- test-time BN statistics, evaluation, alignment ---------------------------------
        row = {"epoch": epoch, "lr": lr, "batch_size": bs, "train_loss": train_loss,
               "train_error": 100.0 * wrong.item() / n}
        if healthy:
            if cfg.bn_stats == "paper":
                refresh_bn_stats(model, tensors.x_train, bs, cfg.bn_stat_batches,
                                 cfg.bn_stat_alpha, stat_gen)
            row["test_error"] = error_rate(model, tensors.x_test, tensors.y_test,
                                           eval_batch, amp)
            if tensors.x_val is not None:
                row["val_error"] = error_rate(model, tensors.x_val, tensors.y_val,
                                              eval_batch, amp)
            if cfg.alignment and asym_layers(model):
                row["alignment"] = _alignment(model, tensors, cfg)
        else:
            diverged_epoch = epoch
            row["test_error"] = math.nan
            row["diverged"] = True
        epoch_seconds = time.perf_counter() - t0
        elapsed += epoch_seconds
        row["seconds"] = epoch_seconds
        history.append(row)
        # Saved before the epoch is streamed: whatever a listener has seen is also on disk.
        if ckpt is not None and (dp is None or dp.main):
            _save_checkpoint(ckpt, cfg, model, optimizer, data_gen, stat_gen, history, elapsed,
                             diverged_epoch)
        if on_epoch is not None and (dp is None or dp.main):
            on_epoch(row)

    if dp is not None:
        # The DDP wrapper goes first, while the process group is still registered, so that
        # freeing its reducer never tears the group down (see distributed.shutdown).
        step_model = None  # noqa: F841
        dp.close()
    result = summarize(cfg, spec, history, diverged_epoch, elapsed, model)
    result["device"] = str(device)  # the one used (config["device"] may say auto)
    return result


def _alignment(model: nn.Module, t: Tensors, cfg: TrainConfig) -> list[dict]:
    rows = {r["layer"]: r for r in M.layer_alignment(model)}
    if all(layer.feedback.symmetric for _, layer in asym_layers(model)):
        for r in rows.values():
            r["grad_angle"] = 0.0  # V = W everywhere: the error signals are backprop's
        return list(rows.values())
    was = model.training
    model.eval()
    n = min(len(t.x_train), cfg.batch_size)
    for r in M.error_signal_alignment(model, t.x_train[:n], t.y_train[:n]):
        rows[r["layer"]]["grad_angle"] = r["grad_angle"]
    model.train(was)
    return list(rows.values())


class CheckpointError(AsymbpError):
    """A checkpoint file that exists but cannot resume the run (corrupt, truncated, not
    asymbp's); `path` is the file. A sweep moves such a file aside and starts the run again."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"checkpoint {path} {problem}; delete it to start the run from "
                         "scratch, or give another checkpoint path")
        self.path, self.problem = Path(path), problem

    def __reduce__(self):  # picklable, for errors that cross a process boundary
        return (type(self), (self.path, self.problem))


def _first_line(err: BaseException, limit: int = 120) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
    # torch's weights-only refusal opens with advice; the reason is on its own line
    text = next((ln for ln in lines if ln.startswith("WeightsUnpickler error")), lines[0])
    text = text.rstrip(".")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _load_checkpoint(path: Path) -> dict | None:
    """The saved state at `path`, or None when there is none yet (then its folder must be
    writable: the run saves there after every epoch)."""
    if path.is_dir():
        raise AsymbpError(f"checkpoint {path} is a folder; give a file path for the "
                          f"checkpoint, e.g. {path / 'run.pt'}")
    if not path.exists():
        folder = next((p for p in path.parents if p.exists()), Path("."))
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise AsymbpError(f"cannot write checkpoint {path}: {folder} is not a writable "
                              "folder; give a checkpoint path in a writable folder")
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise AsymbpError(f"cannot read checkpoint {path} ({err.strerror or err}); make it "
                          "readable or give another checkpoint path") from None
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(path, "is not a checkpoint (not a PyTorch zip archive)")
    try:
        # weights_only: unpickling runs no code from the file; the state is tensors, numbers,
        # strings, lists and dicts only (see _save_checkpoint). On the CPU: the generator
        # states must be CPU ByteTensors, and load_state_dict moves the rest to the model.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file raises many kinds of error
        raise CheckpointError(path, f"cannot be loaded ({_first_line(err)})") from None
    if (not isinstance(state, dict) or not {"model", "optimizer", "history"} <= set(state)
            or not isinstance(state.get("config", {}), dict)):
        raise CheckpointError(path, "is not an asymbp checkpoint (no model, optimizer and "
                                    "history in it)")
    return state


def _check_resume(path: Path, cfg: TrainConfig, saved: dict | None) -> None:
    """A checkpoint resumes only the run that wrote it (same method, data, lr, seed, ...)."""
    if saved is None:
        return
    now = cfg.to_dict()
    # A field the checkpoint predates was at its default then: a field added later (with a
    # default that keeps the old behaviour) must not orphan the checkpoints written before it.
    saved = {**TrainConfig().to_dict(), **saved}
    diff = sorted(k for k in set(now) | set(saved)
                  if k not in RESUME_FREE and now.get(k) != saved.get(k))
    if diff:
        shown = ", ".join(f"{k}={saved.get(k)!r} there, {now.get(k)!r} here" for k in diff[:3])
        raise AsymbpError(f"checkpoint {path} belongs to a different run ({shown}); delete it or "
                          "give another checkpoint path")


def _save_checkpoint(path: Path, cfg: TrainConfig, model, optimizer, data_gen, stat_gen, history,
                     elapsed, diverged_epoch) -> None:
    """Write the run's state atomically (a temporary file, then rename)."""
    state = {
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "data_gen": data_gen.get_state(),
        "stat_gen": stat_gen.get_state(),
        "torch_rng": torch.random.get_rng_state(),
        "history": history,
        "elapsed": elapsed,
        "diverged_epoch": diverged_epoch,
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise AsymbpError(f"cannot write checkpoint {path} ({err.strerror or err}); give a "
                          "checkpoint path in a writable folder") from None


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
