"""The local executor (asymbp.sweep.local): train_many, concurrent workers, gives the same
results as train() one run at a time; threads per worker are counted one way; a failed run
raises.

A seeded cell: the paper's five learning-rate multipliers of one method, plus a second seed,
on a small synthetic dataset. With the same number of torch threads per process the kernels
are deterministic, so every per-epoch metric must be equal, not merely close.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asymbp.sweep import cell, default_layout, train_many
from asymbp.data import Dataset
from asymbp.errors import AsymbpError
from asymbp.train import train


def _data() -> Dataset:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=300)
    x[np.arange(300), 0, y, y] += 3.0  # a learnable signal: class k lights pixel (k, k)
    return Dataset("mnist5k", x[:200], y[:200], x[200:], y[200:], 10, "mnist")


def _same(a, b) -> bool:
    """Equal, with NaN equal to NaN (diverged runs), ignoring wall-clock fields."""
    if isinstance(a, dict):
        keys = set(a) - {"seconds"}
        return keys == set(b) - {"seconds"} and all(_same(a[k], b[k]) for k in keys)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


METRICS = ("test_error", "best_test_error", "best_epoch", "diverged", "diverged_epoch", "epochs")


def _one_by_one(configs, data):
    """`train()` on each config in this process, on one thread (the workers' setting)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [train(c, data=data) for c in configs]
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("method", ["uSF+BN+BM", "brSF-25+BN"])
def test_workers_equal_one_by_one(method):
    configs = cell(method, "mnist5k", seeds=[1], epochs=2, batch_size=50)
    configs += cell(method, "mnist5k", seeds=[2], lr_mults=[1.0], epochs=2, batch_size=50)
    data = _data()
    one_by_one = _one_by_one(configs, data)
    seen = []
    together = train_many(configs, workers=2, threads=1, data=data,
                          on_result=lambda i, r: seen.append(i))
    assert sorted(seen) == list(range(len(configs)))
    for c, a, b in zip(configs, one_by_one, together):
        assert b["config"]["lr_mult"] == c["lr_mult"] and b["config"]["seed"] == c["seed"]
        for key in METRICS:
            assert _same(a[key], b[key]), (c["lr_mult"], c["seed"], key)
    # The cell really trained: the runs differ from each other.
    assert len({r["epochs"][-1]["train_loss"] for r in together}) > 1


def test_in_process_path_and_layout():
    configs = cell("SGD", "mnist5k", lr_mults=[1.0, 0.1], epochs=1, batch_size=100,
                   alignment=False)
    data = _data()
    old = torch.get_num_threads()
    ref = _one_by_one(configs, data)
    got = train_many(configs, workers=0, threads=1, data=data)
    assert all(_same(a["epochs"], b["epochs"]) for a, b in zip(ref, got))
    assert torch.get_num_threads() == old
    assert default_layout(5, cpus=2) == (2, 1)
    assert default_layout(1, cpus=2) == (1, 2)
    with pytest.raises(AsymbpError, match="method"):
        train_many([{"method": "nope"}], workers=0)


def test_threads_per_worker_is_the_one_rule():
    from asymbp.sweep import cores, threads_per_worker

    assert threads_per_worker(2, cpus=5) == 2 and threads_per_worker(8, cpus=2) == 1
    assert threads_per_worker(1) == cores()  # the cores this process may use
    assert default_layout(3, cpus=8) == (3, threads_per_worker(3, cpus=8))


def test_a_run_that_fails_in_a_worker_raises_and_names_the_run():
    # the mnist network cannot take 1x8x8 images: train() refuses it inside the worker
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 1, 8, 8)).astype(np.float32)
    data = Dataset("mnist5k", x, np.arange(20) % 2, x[:4], np.arange(4) % 2, 2, "mnist")
    with pytest.raises(RuntimeError, match=r"run 0 of train_many \(SGD on mnist5k, k=1, seed 1\) "
                                           r"failed: model 'mnist' needs"):
        train_many(cell("SGD", "mnist5k", lr_mults=[1.0], epochs=1), workers=1, threads=1,
                   data=data)
