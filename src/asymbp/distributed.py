"""One run across processes: data-parallel training with torch.distributed.

`train(config)` calls `data_parallel(device)` once. In a single process it returns None and
nothing changes. Under `torchrun` (the `RANK` / `WORLD_SIZE` / `MASTER_ADDR` environment) or
with a process group already initialised by the caller, it returns a `DataParallel` and the run
becomes data parallel:

- every rank draws the same batch order (the same `data_gen` seed) and takes its contiguous
  share of each mini-batch (`shard`);
- the model is wrapped in `DistributedDataParallel`, which *averages* gradients over ranks; the
  paper's loss is the *sum* over the mini-batch, so each rank's summed loss is multiplied by the
  world size (`loss_scale`) and the averaged gradient is exactly the gradient of the whole batch;
- feedback draws need no communication: every layer's generator is seeded from the model seed
  and draws once per update of W, and every rank applies the same updates;
- the epoch's loss and error counts are summed over ranks once per epoch (`all_reduce_`);
  evaluation, BN statistics and alignment run on every rank on the full data (identically);
- only rank 0 writes the checkpoint and streams `on_epoch`; every rank returns the result.

Batch normalisation uses each rank's share of the batch (DDP's default, as in every data-
parallel ResNet recipe), so a BN run is not bitwise the one-process run on the combined batch;
runs without BN are, up to float summation order (tests/test_ddp_train.py).

    torchrun --nproc_per_node 2 -m asymbp run --dataset mnist5k --method frSF-25 --epochs 2
    asymbp run --nproc 2 --dataset mnist5k --method frSF-25 --epochs 2     # the same
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import AsymbpError


@dataclass
class DataParallel:
    """This process's place in a data-parallel run."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool  # train() initialised the process group, so it tears it down

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def loss_scale(self) -> float:
        # DDP averages gradients over ranks; the paper's loss is the sum over the batch.
        return float(self.world)

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` in DistributedDataParallel (parameters broadcast from rank 0)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Feedback parameters that no training backward reaches (weight mirrors learn V
        # off-task) need DDP's unused-parameter search; plain schemes do not pay for it.
        from .layers import asym_layers

        unused = any(l.feedback.mirrored for _, l in asym_layers(model))
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # Buffers (BN running statistics, feedback generator states) evolve identically on
        # every rank; broadcasting them every forward would only cost time.
        import inspect

        sync = ({"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": False})
        return DDP(model, device_ids=ids, find_unused_parameters=unused, **sync)

    def shard(self, idx: Tensor) -> Tensor:
        """This rank's contiguous share of a mini-batch's indices."""
        if len(idx) < self.world:
            raise AsymbpError(f"a mini-batch of {len(idx)} cannot be split over {self.world} "
                              "processes; use a larger batch or fewer processes")
        return idx.tensor_split(self.world)[self.rank]

    def all_reduce_(self, *tensors: Tensor) -> None:
        """Sum each tensor over ranks, in place (once per epoch)."""
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def close(self) -> None:
        if self.owns_group:
            shutdown()


def shutdown() -> None:
    """Destroy the default process group without gloo's teardown deadlock.

    Destroying a ProcessGroupGloo joins its worker threads while holding the GIL, and a worker
    still freeing a finished collective needs the GIL for it: a DDP run (our 2-process test,
    once) then hangs at exit. A barrier, then a pause with the GIL released, lets the workers
    finish first.
    """
    if not dist.is_initialized():
        return
    dist.barrier()
    time.sleep(0.05)
    dist.destroy_process_group()


def data_parallel(device: torch.device) -> DataParallel | None:
    """The data-parallel context of this process, or None for an ordinary one-process run.

    Uses a process group the caller initialised, or initialises one from the torchrun
    environment (gloo on CPU, nccl on CUDA) when `WORLD_SIZE` > 1.
    """
    if not dist.is_available():
        return None
    owns = False
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
            return None
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        owns = True
    world = dist.get_world_size()
    if world <= 1:
        return None
    return DataParallel(dist.get_rank(), world, device, owns)


def local_device(device: str) -> str:
    """The device this process runs `device` on: `auto` resolved (a GPU if there is one, else
    the CPU), and `cuda` under torchrun is this process's GPU (`LOCAL_RANK`). A device this
    machine does not have is the one-line error (`asymbp.hardware.check_device`)."""
    from .hardware import check_device, resolve_device

    check_device(device)
    device = resolve_device(device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m asymbp <argv>` in `nproc` processes through torchrun (one machine)."""
    from torch.distributed.run import main as torchrun

    if nproc < 1:
        raise AsymbpError(f"--nproc must be >= 1, got {nproc}")
    torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", "asymbp", *argv])
    return 0
