"""The local executor: runs in spawned worker processes on this machine (DESIGN §6, §8).

`run_local(tasks, workers, threads)` starts `workers` processes, each with `threads` torch
threads (`threads_per_worker`: the cores this process may use, shared evenly, so the cores are
not oversubscribed), hands them the tasks one at a time and yields their events (see
`asymbp.sweep.driver`). A worker is a `Runner`: it loads each dataset once and keeps it for all
its runs, places a run on a GPU (`worker_device`), and turns any failure into a "failed" event,
so the sweep goes on. A worker ends when its driver is gone (`kill -9`), so no orphan trains on.

`train_many(configs)` is the same executor as a plain function: every config trained with
`train()`, several at a time, the results returned in the order of `configs`. A worker is the
same code path as a one-by-one run, so the results are the ones `train()` gives in a process
with the same thread count — bitwise on CPU (the kernels are deterministic for a fixed thread
count; tests/test_sweep_local.py checks it). With another thread count the float summation
order changes, so losses agree to about 1e-6 relative and error rates to an example or two once
training dynamics amplify the difference (Batch Manhattan's sign of a near-zero gradient is the
usual amplifier).

Why workers and not one batched model: a "grouped" model (the runs concatenated along channels:
grouped convolutions, bmm for the fully connected layers, per-run learning rates in the
optimizer) was timed against sequential steps on the 2-core CPU (benchmarks/sweep_time.py,
`grouped`): 1.00x with one thread and with two, because these networks' steps are bound by
oneDNN convolutions, batch norm and pooling, not by Python overhead; two one-thread workers use
both cores with no synchronisation at all, 1.23x the throughput of one two-thread process on an
mnist5k cell (0.98 vs 1.21 s per run-epoch, uSF+BN+BM, channels_last). On a GPU, where a tiny
network leaves the device idle between kernel launches, several workers per GPU fill it the same
way (CUDA MPS helps); there a sweep packs each cell into one model instead (`asymbp.packed`,
`PackTask`: a worker trains a pack's runs together, each with its own events and checkpoint).

    from asymbp.sweep import cell, train_many
    results = train_many(cell("uSF+BN+BM", "mnist5k", seeds=[1], channels_last=True),
                         workers=2, threads=1)

On CPU, give image networks `channels_last=True` (NHWC: about 1.5x faster epochs of the mnist
network, mostly in max pooling and the convolutions). Local workers are spawned processes, so a
script that uses them must guard its entry point with `if __name__ == "__main__":` (the spawned
workers import the main module).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data as datasets
from ..config import TrainConfig, check_config
from ..errors import AsymbpError
from ..execution import CheckpointError
from ..hardware import resolve_device
from ..train import train

# ---- how many workers, how many threads ------------------------------------------------------


def cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. under taskset or a container's
    CPU set), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Torch threads of each of `workers` workers: the `cpus` (default: `cores()`) shared
    evenly, at least one. The one rule, for every executor and `train_many`."""
    return max(1, (cpus or cores()) // max(1, workers))


def default_layout(n_runs: int, cpus: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker): one single-threaded worker per core, fewer if fewer runs."""
    workers = max(1, min(n_runs, cpus or cores()))
    return workers, threads_per_worker(workers, cpus)


# ---- what a worker does (shared with the Ray executor) --------------------------------------


@dataclass(frozen=True)
class Task:
    """What a worker needs for one run (picklable); `checkpoint` None: the run is not resumable."""

    key: str
    config: dict
    checkpoint: str | None


@dataclass(frozen=True)
class PackTask:
    """Runs of one cell (differing only in lr_mult and seed) that a worker trains as one packed
    model (`asymbp.packed.train_packed`); each run keeps its own key, events and checkpoint."""

    tasks: tuple[Task, ...]

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.tasks]


def placed_device(device: str, wid: int, n_gpus: int) -> str:
    """The device worker `wid` runs a config's `device` on: a bare "cuda" goes round-robin over
    the `n_gpus` GPUs this worker sees (worker 0 on cuda:0, worker 1 on cuda:1, ...), so
    `--workers 16` on an 8-GPU machine puts two runs on each GPU; any other device is kept."""
    if device == "cuda" and n_gpus > 1:
        return f"cuda:{wid % n_gpus}"
    return device


def worker_device(device: str, wid: int, n_gpus: int) -> str:
    """The device worker `wid`, which sees `n_gpus` GPUs, runs a config's `device` on: `auto`
    is resolved first (cuda when there is a GPU), so it spreads over the GPUs like `cuda`."""
    return placed_device(resolve_device(device, n_gpus), wid, n_gpus)


def set_aside(path: Path, problem: str) -> Path:
    """Move a checkpoint that cannot be loaded to `<name>.corrupt` (kept to look at); return
    where it went."""
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except OSError as err:
        raise AsymbpError(f"checkpoint {path} {problem} and cannot be moved aside "
                          f"({err.strerror or err}); delete it, then run the sweep again"
                          ) from None
    return aside


class Runner:
    """A worker's state: its torch threads, its GPU (if any) and the datasets it has loaded
    (once each; `data`: one dataset given for every run)."""

    def __init__(self, threads: int, wid: int = 0, data: datasets.Dataset | None = None):
        torch.set_num_threads(threads)
        self.wid, self.data = wid, data
        self.n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.datasets: dict = {}

    def dataset(self, config: dict) -> datasets.Dataset:
        if self.data is not None:
            return self.data
        key = (config["dataset"], config.get("data_dir"), config.get("data_seed", 0),
               config.get("synthetic"))
        if key not in self.datasets:
            self.datasets[key] = datasets.load(key[0], key[1], seed=key[2], synthetic=key[3])
        return self.datasets[key]

    def device(self, config: dict) -> str:
        return worker_device(str(config.get("device", "auto")), self.wid, self.n_gpus)

    def run(self, task: Task, emit) -> tuple:
        """Train `task`, streaming epochs through `emit(event)`; return the final event."""
        config = dict(task.config)
        config["device"] = self.device(config)

        def attempt():
            return train(config, checkpoint=task.checkpoint, data=self.dataset(config),
                         on_epoch=lambda row: emit(("epoch", task.key, row)))

        try:
            return ("done", task.key, _restarting(attempt, emit, lambda path: task.key))
        except Exception as err:  # noqa: BLE001 - any failure is recorded, the sweep goes on
            return ("failed", task.key, _failure(err))

    def run_pack(self, pack: PackTask, emit) -> list[tuple]:
        """Train a pack's runs together, streaming each run's epochs through `emit(event)`
        (and a "note" when they cannot be packed); return each run's final event."""
        from ..packed import train_packed

        keys = pack.keys
        configs = [dict(t.config, device=self.device(t.config)) for t in pack.tasks]
        by_path = {str(t.checkpoint): t.key for t in pack.tasks}

        def attempt():
            return train_packed(configs, checkpoints=[t.checkpoint for t in pack.tasks],
                                data=self.dataset(configs[0]),
                                on_epoch=lambda i, row: emit(("epoch", keys[i], row)),
                                log=lambda line: emit(("note", keys[0], line)))

        try:
            results = _restarting(attempt, emit, lambda path: by_path.get(str(path), keys[0]))
            return [("done", k, r) for k, r in zip(keys, results)]
        except Exception as err:  # noqa: BLE001 - any failure is recorded, the sweep goes on
            return [("failed", k, _failure(err)) for k in keys]


def _restarting(attempt, emit, key_of):
    """`attempt()`; if it finds a corrupt checkpoint, that file set aside, a "restart" event for
    the run `key_of(path)` it belongs to, and `attempt()` once more from the start. Left in
    place, a corrupt checkpoint would fail its run on every rerun of the sweep."""
    try:
        return attempt()
    except CheckpointError as err:
        aside = set_aside(err.path, err.problem)
        emit(("restart", key_of(err.path), f"checkpoint {err.path} {err.problem}; moved it to "
                                           f"{aside.name} and started the run again"))
        return attempt()


def _failure(err: Exception) -> str:
    """A run's error as the store records it: the one line of a user mistake, else the
    exception with its traceback."""
    if isinstance(err, AsymbpError):
        return str(err)
    return f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"


# ---- the worker processes -------------------------------------------------------------------

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


def _orphan_watchdog(parent: int) -> None:
    """End this worker when the driver is gone (e.g. `kill -9`), so no orphan keeps training."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _local_worker(wid: int, tasks, events, threads: int, parent: int, data) -> None:
    threading.Thread(target=_orphan_watchdog, args=(parent,), daemon=True).start()
    torch.set_num_interop_threads(1)  # a worker's parallelism is its intra-op threads
    runner = Runner(threads, wid, data)
    while (task := tasks.get()) is not None:
        emit = lambda ev: events.put((ev[0], wid, *ev[1:]))  # noqa: E731
        members = task.tasks if isinstance(task, PackTask) else (task,)
        for t in members:
            events.put(("start", wid, t.key, runner.device(t.config)))
        finals = (runner.run_pack(task, emit) if isinstance(task, PackTask)
                  else [runner.run(task, emit)])
        for kind, key, payload in finals:
            events.put((kind, wid, key, payload))


def run_local(tasks: list[Task | PackTask], workers: int, threads: int,
              data: datasets.Dataset | None = None):
    """Run `tasks` (single runs or packs) in `workers` spawned processes of `threads` torch
    threads each; yield events (see asymbp.sweep.driver), one "done"/"failed" per run.
    `data`: one loaded dataset for every run (default: each worker loads its runs' datasets)."""
    # spawn, not fork: a forked child of a process that has started torch's thread pools can
    # deadlock, and CUDA cannot be re-initialised in a forked child.
    ctx = mp.get_context("spawn")
    task_q, event_q = ctx.Queue(), ctx.Queue()
    for t in tasks:
        task_q.put(t)
    workers = max(1, min(workers, len(tasks)))
    for _ in range(workers):
        task_q.put(None)
    procs = [ctx.Process(target=_local_worker,
                         args=(w, task_q, event_q, threads, os.getpid(), data),
                         daemon=True, name=f"asymbp-worker-{w}") for w in range(workers)]
    with worker_malloc_env():
        for p in procs:
            p.start()
    current: dict[int, list[str]] = {}  # worker -> the runs it is training
    remaining = sum(len(t.tasks) if isinstance(t, PackTask) else 1 for t in tasks)
    try:
        while remaining:
            try:
                ev = event_q.get(timeout=1.0)
            except queue.Empty:
                for w, p in enumerate(procs):
                    if not p.is_alive() and current.get(w):
                        for key in current.pop(w):
                            remaining -= 1
                            yield ("failed", w, key,
                                   f"worker process died (exit code {p.exitcode})")
                if not any(p.is_alive() for p in procs):
                    break  # what is left stays pending for the next sweep
                continue
            kind, w, key = ev[:3]
            if kind == "start":
                current.setdefault(w, []).append(key)
            elif kind in ("done", "failed"):
                if key in current.get(w, []):
                    current[w].remove(key)
                remaining -= 1
            yield ev
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)


# ---- many runs as a function ------------------------------------------------------------------


def train_many(configs: list[dict], *, workers: int | None = None, threads: int | None = None,
               data: datasets.Dataset | None = None,
               on_result: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train every config, several at a time on this machine; results in the configs' order.

    Arguments:
        configs: `TrainConfig`s or their dicts (e.g. `cell(...)`), validated before anything
            starts.
        workers: concurrent processes (default: one per CPU core, at most one per run);
            `workers=0` runs them one by one in this process (the reference path).
        threads: torch threads per worker (default: `threads_per_worker`, cores / workers).
        data: an already loaded `asymbp.data.Dataset` used by every run (default: each run
            loads its config's dataset; the loaders cache on disk).
        on_result: called as `on_result(index, result)` as soon as each run finishes (in this
            process), e.g. to write it to the store.

    Returns:
        The `train()` result dict of each config, in order. A run that fails raises (an
        `AsymbpError` before anything starts for a bad config; a `RuntimeError` naming the run
        and its error once the workers run), and the other workers are stopped.
    """
    configs = [c.to_dict() if isinstance(c, TrainConfig) else dict(c) for c in configs]
    for c in configs:
        check_config(TrainConfig.from_dict(c))
    workers = default_layout(len(configs))[0] if workers is None else int(workers)
    if workers < 0 or (threads is not None and int(threads) < 1):
        raise AsymbpError(f"workers must be >= 0 and threads >= 1, got {workers}, {threads}")
    results: list[dict | None] = [None] * len(configs)
    if not configs:
        return []
    if workers == 0:
        return _one_by_one(configs, threads, data, on_result)

    tasks = [Task(str(i), c, None) for i, c in enumerate(configs)]
    threads = int(threads) if threads else threads_per_worker(workers)
    for kind, _, key, payload in run_local(tasks, workers, threads, data):
        i = int(key)
        if kind == "done":
            results[i] = payload
            if on_result is not None:
                on_result(i, payload)
        elif kind == "failed":
            c = TrainConfig.from_dict(configs[i])
            raise RuntimeError(f"run {i} of train_many ({c.method} on {c.dataset}, "
                               f"k={c.lr_mult:g}, seed {c.seed}) failed: {payload}")
    if any(r is None for r in results):
        raise RuntimeError("the worker processes ended before every run finished")
    return results


def _one_by_one(configs: list[dict], threads: int | None, data, on_result) -> list[dict]:
    """`train()` on each config in this process (with `threads` torch threads, then the
    previous setting again)."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        results = []
        for i, c in enumerate(configs):
            results.append(train(c, data=data))
            if on_result is not None:
                on_result(i, results[i])
        return results
    finally:
        torch.set_num_threads(old)
