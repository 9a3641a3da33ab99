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
# Every scheme, then each with its non-default options (BioTorch's scales, sparse feedback):
# (key, scheme, options).
VARIANTS = [(s, s, {}) for s in SCHEMES] + [
    (f"{s}{sorted(o.items())}", s, o) for s, o in asymbp.feedback.option_variants()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _worker(rank: int, world: int, port: int, variants: list, out_dir: str) -> None:
    _init(rank, world, port)
    try:
        results = {}
        for key, scheme, options in variants:
            torch.manual_seed(0)
            model = asymbp.models.build("mnist", 10, bn=True)
            asymbp.convert(model, scheme, seed=5, **options)
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
            results[key] = Vs
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        asymbp.distributed.shutdown()  # not destroy_process_group: see its docstring


@pytest.mark.slow
def test_feedback_identical_across_ranks_for_every_scheme(tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, VARIANTS, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for key, scheme, options in VARIANTS:
        for step0, step1 in zip(r0[key], r1[key]):
            for a, b in zip(step0, step1):
                assert torch.equal(a, b), key
        # Redrawn schemes really do draw afresh each step on every rank.
        if asymbp.feedback.resolve(scheme)[0].redrawn:
            assert not torch.equal(r0[key][0][0], r0[key][1][0])
        # Sparse feedback is sparse on every rank (the same connections, by the equality above);
        # PFA's and DFA's masks are on B, not on V.
        cls = asymbp.feedback.resolve(scheme)[0]
        if options.get("density", 1) < 1 and not (cls.direct or cls.learned):
            assert any((V == 0).any() for V in r0[key][0]), key


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The three combined batches of 8 that the ranks split in halves (rank r takes 4r..4r+3)."""
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen))
            for _ in range(3)]


def _ddp_equivalence_worker(rank, world, port, scheme, out_dir):
    _init(rank, world, port)
    try:
        torch.manual_seed(0)
        model = asymbp.convert(asymbp.models.build("mnist", 10), scheme, seed=5)
        ddp = DDP(model)
        opt = asymbp.optim.SGD(ddp.parameters(), lr=1e-3)
        grads = None
        for x, y in _batches():
            xs, ys = x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4]
            opt.zero_grad()
            # DDP averages gradients over ranks; the paper's loss is the sum over the batch.
            (F.cross_entropy(ddp(xs), ys, reduction="sum") * world).backward()
            grads = grads or {n: p.grad.clone() for n, p in model.named_parameters()}
            opt.step()
        if rank == 0:
            torch.save({"grads": grads, "state": model.state_dict()},
                       os.path.join(out_dir, f"{scheme}.pt"))
    finally:
        asymbp.distributed.shutdown()  # not destroy_process_group: see its docstring


def _one_process(scheme: str, halves: bool):
    """The workers' 3 steps in this process: (the first step's gradients, the final state).

    halves: each batch as the two ranks see it, two backward passes whose gradients accumulate
    (g0 + g1); otherwise the combined batch of 8 in one backward.
    """
    torch.manual_seed(0)
    model = asymbp.convert(asymbp.models.build("mnist", 10), scheme, seed=5)
    opt = asymbp.optim.SGD(model.parameters(), lr=1e-3)
    grads = None
    for x, y in _batches():
        opt.zero_grad()
        for xs, ys in zip(x.split(4), y.split(4)) if halves else [(x, y)]:
            F.cross_entropy(model(xs), ys, reduction="sum").backward()
        grads = grads or {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
    return grads, model.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["BP", "frSF-25"])
def test_ddp_equals_one_process_on_the_combined_batch(tmp_path, scheme, one_thread):
    # The workers run on one thread (_init); so does this process (one_thread), so that both
    # sides run the same kernels.
    mp.spawn(_ddp_equivalence_worker, args=(2, _free_port(), scheme, str(tmp_path)), nprocs=2,
             join=True)
    ddp = torch.load(tmp_path / f"{scheme}.pt")

    # The same kernels on the same half-batches: allreduce forms g0 + g1 (a + b is exact to
    # the same bits in either order, and the ×world before it and ÷world inside it are powers
    # of two), just as accumulating the two backward passes does. So 3 steps later the states
    # are equal bit for bit, even for frSF, whose V = M∘sign(W) would amplify any difference.
    _, state = _one_process(scheme, halves=True)
    for k, v in state.items():
        assert torch.equal(v, ddp["state"][k]), k

    # The combined batch in one backward: the same gradient, its float32 sums grouped
    # differently. The longest, conv1's weight gradient, sums N = 8·24·24 = 4608 terms (batch ×
    # positions): regrouping changes its rounding by ~√N·eps ≈ 8e-6 of the terms' size, and
    # each of the 3 layers below the output regroups its own sums: ~3e-5. Allowed: 1e-4 of the
    # tensor's largest element (measured: 1.2e-6) — of the tensor, not of each element, since a
    # sum's rounding scales with its terms, not with its result, which may cancel. First step
    # only: later, frSF's sign(W) may differ for a weight within rounding of zero, which is no
    # summation error (the bitwise check above covers all 3 steps).
    grads, _ = _one_process(scheme, halves=False)
    for name, g in grads.items():
        tol = 1e-4 * g.abs().max().item()
        torch.testing.assert_close(ddp["grads"][name], g, rtol=0, atol=tol, msg=name)
