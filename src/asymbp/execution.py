"""Where and how a run executes, not what it computes: the device, the memory format, the
processes of a data-parallel run, torch.compile, and the checkpoint that makes a run resumable.

`train()` (the recipe, asymbp.train) makes one `Execution` from its config and calls it at a few
points; nothing here calls back into the recipe. Every config field it reads has the role
EXECUTION (asymbp.config): none of them changes what a run computes, beyond float rounding.

    execution = Execution(cfg, checkpoint)       # the device; the process group under torchrun
    model = execution.memory_format(model)       # NHWC kernels when channels_last
    step_model = execution.wrap(model)           # DistributedDataParallel, torch.compile
    progress = execution.resume(model, optimizer, generators)   # or a fresh Progress
    ...  idx = execution.shard(idx); execution.backward(loss); execution.all_reduce_(...)
    execution.save(model, optimizer, generators, progress)      # after every epoch
    execution.close()

A checkpoint holds the model, the optimizer, the run's generators, torch's global RNG state
and the `Progress` (the finished epochs' rows), so a resumed run continues exactly where the
uninterrupted one would be (tests/test_train.py checks it).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import RESUME_FREE, TrainConfig
from .distributed import data_parallel, local_device
from .errors import AsymbpError


@dataclass
class Progress:
    """How far a run has got: what a checkpoint holds beside the model and the optimizer."""

    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    elapsed: float = 0.0  # seconds of the finished epochs
    diverged_epoch: int | None = None

    @property
    def next_epoch(self) -> int:
        return len(self.history) + 1

    def add(self, row: dict) -> None:
        """Record a finished epoch (its row has its `seconds`)."""
        self.history.append(row)
        self.elapsed += row["seconds"]


class Execution:
    """How one run executes: made from its config (and checkpoint path) by `train()`."""

    def __init__(self, cfg: TrainConfig, checkpoint: str | os.PathLike | None = None):
        self.cfg = cfg
        # A device this machine lacks is the one-line error here, before any data is loaded.
        self.device = torch.device(local_device(cfg.device))
        # None unless run under torchrun / with an initialised process group.
        self.parallel = data_parallel(self.device)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        # Evaluation batch: 250 on CPU (activations that stay in cache: a 1000-image batch of
        # the mnist network took twice as long per image), 1000 on a GPU.
        self.eval_batch_size = int(cfg.eval_batch_size
                                   or (250 if self.device.type == "cpu" else 1000))

    @property
    def main(self) -> bool:
        """Whether this process speaks for the run (rank 0 of a data-parallel run)."""
        return self.parallel is None or self.parallel.main

    # ---- the device ----------------------------------------------------------------------------

    def autocast(self):
        """The context the forward passes run in: bf16 autocast, or nothing for fp32."""
        if self.cfg.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def memory_format(self, x):
        """`x` (a model, or an input tensor) in NHWC memory when the run asks for channels_last:
        a model's 4-d kernels and 4-d image tensors; anything else as it is."""
        if not self.cfg.channels_last:
            return x
        if isinstance(x, nn.Module):
            return x.to(memory_format=torch.channels_last)  # only 4-d weights change
        if isinstance(x, Tensor) and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training steps call: `model` in DistributedDataParallel (a parallel
        run) and compiled (`compile`); `model` itself stays the one to evaluate and save."""
        step_model = model if self.parallel is None else self.parallel.wrap(model)
        mode = self.cfg.compile
        if not mode:
            return step_model
        return torch.compile(step_model, mode=None if mode in (True, "default") else mode)

    # ---- data parallel (each a no-op in one process) -------------------------------------------

    def shard(self, idx: Tensor) -> Tensor:
        """This process's share of a mini-batch's indices."""
        return idx if self.parallel is None else self.parallel.shard(idx)

    def backward(self, loss: Tensor) -> None:
        """Backpropagate the summed loss; DDP averages gradients over ranks, so a parallel run
        scales it by the world size (the gradient is then the whole batch's)."""
        (loss if self.parallel is None else loss * self.parallel.loss_scale).backward()

    def all_reduce_(self, *tensors: Tensor) -> None:
        """Sum each tensor over the processes, in place (once per epoch)."""
        if self.parallel is not None:
            self.parallel.all_reduce_(*tensors)

    def close(self) -> None:
        """Tear down the process group this run initialised. The caller drops its DDP wrapper
        first, while the group is still registered, so that freeing the wrapper's reducer
        never tears the group down (see distributed.shutdown)."""
        if self.parallel is not None:
            self.parallel.close()

    # ---- checkpoint ------------------------------------------------------------------------------

    def resume(self, model: nn.Module, optimizer, generators: dict[str, torch.Generator]
               ) -> Progress:
        """Restore the run from its checkpoint, if there is one: the model, the optimizer, the
        `generators` (by name), torch's global RNG; return its progress (fresh without one)."""
        state = load_checkpoint(self.checkpoint) if self.checkpoint is not None else None
        if state is None:
            return Progress()
        check_resume(self.checkpoint, self.cfg, state.get("config"))
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for name, gen in generators.items():
                gen.set_state(state[name])
            torch.random.set_rng_state(state["torch_rng"])
            progress = Progress(list(state["history"]), float(state["elapsed"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(self.checkpoint,
                                  f"does not fit this run: {first_line(err)}") from None
        progress.diverged_epoch = state.get("diverged_epoch")
        return progress

    def save(self, model: nn.Module, optimizer, generators: dict[str, torch.Generator],
             progress: Progress) -> None:
        """Write the run's state (rank 0 only), atomically: a temporary file, then rename."""
        if self.checkpoint is None or not self.main:
            return
        path = self.checkpoint
        state = {
            "config": self.cfg.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            **{name: gen.get_state() for name, gen in generators.items()},
            "torch_rng": torch.random.get_rng_state(),
            "history": progress.history,
            "elapsed": progress.elapsed,
            "diverged_epoch": progress.diverged_epoch,
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


class CheckpointError(AsymbpError):
    """A checkpoint file that exists but cannot resume the run (corrupt, truncated, not
    asymbp's); `path` is the file. A sweep moves such a file aside and starts the run again."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"checkpoint {path} {problem}; delete it to start the run from "
                         "scratch, or give another checkpoint path")
        self.path, self.problem = Path(path), problem

    def __reduce__(self):  # picklable, for errors that cross a process boundary
        return (type(self), (self.path, self.problem))


def first_line(err: BaseException, limit: int = 120) -> str:
    """The line of an exception's message that says what went wrong, shortened to `limit`."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
    # torch's weights-only refusal opens with advice; the reason is on its own line
    text = next((ln for ln in lines if ln.startswith("WeightsUnpickler error")), lines[0])
    text = text.rstrip(".")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_checkpoint(path: Path) -> dict | None:
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
        # strings, lists and dicts only (see Execution.save). On the CPU: the generator
        # states must be CPU ByteTensors, and load_state_dict moves the rest to the model.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file raises many kinds of error
        raise CheckpointError(path, f"cannot be loaded ({first_line(err)})") from None
    if (not isinstance(state, dict) or not {"model", "optimizer", "history"} <= set(state)
            or not isinstance(state.get("config", {}), dict)):
        raise CheckpointError(path, "is not an asymbp checkpoint (no model, optimizer and "
                                    "history in it)")
    return state


def check_resume(path: Path, cfg: TrainConfig, saved: dict | None) -> None:
    """A checkpoint resumes only the run that wrote it (same method, data, lr, seed, ...);
    the fields that do not change what a run computes (`RESUME_FREE`) may differ."""
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
