"""Many runs on one device: the five learning-rate multipliers of a cell, and seeds, together.

`train_many(configs)` trains every config with `train()` in concurrent worker processes that
share the machine (or one GPU), each with its own few threads, and returns the results in the
order of `configs`. A worker is the same code path as a one-by-one run, so the results are the
ones `train()` gives in a process with the same thread count — bitwise on CPU (the kernels are
deterministic for a fixed thread count; tests/test_batched.py checks it). With another thread
count the float summation order changes, so losses agree to about 1e-6 relative and error rates
to an example or two once training dynamics amplify the difference (Batch Manhattan's sign of
a near-zero gradient is the usual amplifier).

Why workers and not one batched model: a "grouped" model (the runs concatenated along channels:
grouped convolutions, bmm for the fully connected layers, per-run learning rates in the
optimizer) was timed against sequential steps on the 2-core CPU (benchmarks/sweep_time.py,
`grouped`): 1.00x with one thread and with two, because these networks' steps are bound by
oneDNN convolutions, batch norm and pooling, not by Python overhead; two one-thread workers use
both cores with no synchronisation at all, 1.23x the throughput of one two-thread process on an
mnist5k cell (0.98 vs 1.21 s per run-epoch, uSF+BN+BM, channels_last). On a GPU, where a tiny
network leaves the device idle between kernel launches, several workers per GPU fill it the same way
(CUDA MPS helps); a vmap/grouped model remains the next step there.

    from asymbp.batched import train_many, cell
    results = train_many(cell("uSF+BN+BM", "mnist5k", seeds=[1], channels_last=True),
                         workers=2, threads=1)

On CPU, give image networks `channels_last=True` (NHWC: about 1.5x faster epochs of the mnist
network, mostly in max pooling and the convolutions).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed

from .errors import AsymbpError

# The paper's five learning-rate multipliers k (base = 5e-4 × k), DESIGN §6.
LR_MULTS = (100.0, 10.0, 1.0, 0.1, 0.01)


def cell(method: str, dataset: str, seeds: Iterable[int] = (1,), lr_mults=LR_MULTS,
         **options) -> list[dict]:
    """The configs of one (method, dataset) cell: every lr multiplier × every seed."""
    return [dict(dataset=dataset, method=method, lr_mult=float(k), seed=int(s), **options)
            for s in seeds for k in lr_mults]


def default_layout(n_runs: int, cpus: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker): one single-threaded worker per core, fewer if fewer runs."""
    cpus = cpus or os.cpu_count() or 1
    workers = max(1, min(n_runs, cpus))
    return workers, max(1, cpus // workers)


# ---- the worker process -----------------------------------------------------------------

# glibc malloc settings for the workers (unless the environment sets them): the activations of
# these networks (a few MB each) are above glibc's default mmap threshold, so every step maps
# and zero-faults fresh pages and trims them again; keeping them in the heap made a whole
# mnist5k epoch about 10 % faster on the 2-core CPU (benchmarks/sweep_time.py).
WORKER_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # glibc's maximum
    "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
    "MALLOC_TOP_PAD_": str(256 << 20),
}


@contextlib.contextmanager
def worker_malloc_env():
    """Set `WORKER_MALLOC` (unless the environment sets it) while worker processes start."""
    saved = {k: os.environ.get(k) for k in WORKER_MALLOC}
    for k, v in WORKER_MALLOC.items():
        os.environ.setdefault(k, v)  # read by each worker's C library when it starts
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_DATA = None  # the dataset handed to this worker, if any


def _init_worker(threads: int, data) -> None:
    import torch

    global _DATA
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    _DATA = data


def _run_one(config: dict) -> dict:
    from .train import train

    return train(config, data=_DATA)


# ---- the API ------------------------------------------------------------------------------


def train_many(configs: list[dict], *, workers: int | None = None, threads: int | None = None,
               data=None, on_result: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train every config, several at a time on this machine; results in the configs' order.

    Arguments:
        configs: `TrainConfig` dicts (e.g. `cell(...)`), validated before anything starts.
        workers: concurrent processes (default: one per CPU core, at most one per run);
            `workers=0` runs them one by one in this process (the reference path).
        threads: torch threads per worker (default: cores / workers).
        data: an already loaded `asymbp.data.Dataset` used by every run (default: each run
            loads its config's dataset; the loaders cache on disk).
        on_result: called as `on_result(index, result)` as soon as each run finishes (in this
            process), e.g. to write it to the store.

    Returns:
        The `train()` result dict of each config, in order.
    """
    from .train import TrainConfig, check_config

    configs = [c.to_dict() if isinstance(c, TrainConfig) else dict(c) for c in configs]
    for c in configs:
        check_config(TrainConfig.from_dict(c))
    default_workers, default_threads = default_layout(len(configs))
    workers = default_workers if workers is None else int(workers)
    if workers < 0 or (threads is not None and int(threads) < 1):
        raise AsymbpError(f"workers must be >= 0 and threads >= 1, got {workers}, {threads}")
    if threads is None:
        threads = default_threads if workers else None
    results: list[dict | None] = [None] * len(configs)

    if workers == 0:
        import torch

        from .train import train

        old = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))
        try:
            for i, c in enumerate(configs):
                results[i] = train(c, data=data)
                if on_result is not None:
                    on_result(i, results[i])
        finally:
            torch.set_num_threads(old)
        return results

    # spawn, not fork: a forked child of a process that has started torch's thread pools can
    # deadlock, and CUDA cannot be re-initialised in a forked child.
    ctx = mp.get_context("spawn")
    with worker_malloc_env(), ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker,
            initargs=(int(threads), data)) as pool:
        futures = {pool.submit(_run_one, c): i for i, c in enumerate(configs)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_result is not None:
                on_result(i, results[i])
    return results
