"""Real torch.distributed (gloo, 2 processes on CPU): every replica uses the same feedback V."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import asymbp
import asymbp.distributed

SCHEMES = asymbp.feedback.variants()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _worker(rank: int, world: int, port: int, schemes: list[str], out_dir: str) -> None:
    _init(rank, world, port)
    try:
        results = {}
        for scheme in schemes:
            torch.manual_seed(0)
            model = asymbp.models.build("mnist", 10, bn=True)
            asymbp.convert(model, scheme, seed=5)
            ddp = DDP(model)
            opt = asymbp.optim.SGD(ddp.parameters(), lr=1e-3)
            gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
            Vs = []
            for _ in range(3):
                x = torch.randn(4, 1, 28, 28, generator=gen)
                y = torch.randint(0, 10, (4,), generator=gen)
                opt.zero_grad()
                F.cross_entropy(ddp(x), y, reduction="sum").backward()
                opt.step()
                Vs.append([l.feedback_weight() for _, l in asymbp.asym_layers(model)])
            results[scheme] = Vs
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        asymbp.distributed.shutdown()  # not destroy_process_group: see its docstring


@pytest.mark.slow
def test_feedback_identical_across_ranks_for_every_scheme(tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, SCHEMES, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for scheme in SCHEMES:
        for step0, step1 in zip(r0[scheme], r1[scheme]):
            for a, b in zip(step0, step1):
                assert torch.equal(a, b), scheme
        # Redrawn schemes really do draw afresh each step on every rank.
        if asymbp.feedback.resolve(scheme)[0].redrawn:
            assert not torch.equal(r0[scheme][0][0], r0[scheme][1][0])


def _ddp_equivalence_worker(rank, world, port, scheme, out_dir):
    _init(rank, world, port)
    try:
        torch.manual_seed(0)
        model = asymbp.convert(asymbp.models.build("mnist", 10), scheme, seed=5)
        ddp = DDP(model)
        opt = asymbp.optim.SGD(ddp.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(7)
        for _ in range(3):
            x = torch.randn(8, 1, 28, 28, generator=gen)
            y = torch.randint(0, 10, (8,), generator=gen)
            xs, ys = x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4]
            opt.zero_grad()
            # DDP averages gradients over ranks; the paper's loss is the sum over the batch.
            (F.cross_entropy(ddp(xs), ys, reduction="sum") * world).backward()
            opt.step()
        if rank == 0:
            torch.save(model.state_dict(), os.path.join(out_dir, f"{scheme}.pt"))
    finally:
        asymbp.distributed.shutdown()  # not destroy_process_group: see its docstring


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["BP", "frSF-25"])
def test_ddp_equals_one_process_on_the_combined_batch(tmp_path, scheme):
    mp.spawn(_ddp_equivalence_worker, args=(2, _free_port(), scheme, str(tmp_path)), nprocs=2,
             join=True)
    torch.manual_seed(0)
    model = asymbp.convert(asymbp.models.build("mnist", 10), scheme, seed=5)
    opt = asymbp.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        x = torch.randn(8, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y, reduction="sum").backward()
        opt.step()
    ddp_state = torch.load(tmp_path / f"{scheme}.pt")
    for k, v in model.state_dict().items():
        if torch.is_tensor(v) and v.is_floating_point():
            torch.testing.assert_close(v, ddp_state[k], rtol=1e-4, atol=1e-5)
