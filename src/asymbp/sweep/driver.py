"""The driver of a sweep: the planned runs into the results database (DESIGN §6, §8).

`sweep(runs, db)` (runs from `asymbp.sweep.plan`) is the driver: it records every planned run in
the results database, skips the finished ones, hands the rest to an executor and writes what
comes back — it is the only writer of the database. An executor is a generator of events, the
same whichever runs the work:

    ("start", worker, run_key, device)   a worker began (or resumed) the run on `device`
    ("epoch", worker, run_key, row)      an epoch finished (the row `train` gives `on_epoch`)
    ("done", worker, run_key, result)    the run's result dict (`train`'s return value)
    ("failed", worker, run_key, error)   an exception, as text
    ("restart", worker, run_key, line)   the run's checkpoint could not be loaded: it was moved
                                         aside and the run starts again from epoch 1

- `local` (asymbp.sweep.local): worker processes (spawned), each with `cores // workers` torch
  threads so the cores are not oversubscribed; each loads a dataset once and keeps it for all
  its runs.
- `ray` (asymbp.sweep.ray): one actor per worker on a Ray cluster (`ray.init(address)`), same
  threads rule.

Faults: every run checkpoints after each epoch to `<db>.runs/<run_key>.pt`, so running the same
command again continues unfinished runs from their last epoch; the driver writes each epoch as
it arrives, so `kill -9` loses at most the epochs in flight. A checkpoint that cannot be loaded
is moved to `<run_key>.pt.corrupt` (one line in the log says so) and its run starts again from
epoch 1. A run that raises is stored as failed with its error and the sweep goes on
(`retry_failed` runs those again); a run whose loss becomes NaN/inf is stored as diverged. A
sweep holds an flock on `<db>.lock` for its life, so a second sweep on the same database stops
with a one-line error.

Local workers are spawned processes, so a script that calls `sweep` must guard its entry point
with `if __name__ == "__main__":` (the spawned workers import the main module).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

from ..config import TrainConfig
from ..errors import AsymbpError
from .local import PackTask, Task, run_local, threads_per_worker
from .plan import RunSpec
from .ray import run_ray

BACKENDS = ("local", "ray")


def checkpoint_dir(db) -> Path:
    return Path(str(db) + ".runs")


def lock_path(db) -> Path:
    return Path(str(db) + ".lock")


def take_lock(db) -> int:
    """Hold `<db>.lock` exclusively for the sweep's life and return its descriptor.

    Taking the lock is the check, in one step, so two sweeps started at one instant cannot both
    run. It is an flock: the kernel drops it when the process ends, `kill -9` included, so a
    stale lock never blocks a later sweep (the file itself stays; it is not the lock)."""
    import fcntl

    path = lock_path(db)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise AsymbpError(f"cannot create the sweep's lock file {path} ({err.strerror or err});"
                          " make its folder writable or give another --db") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # The holder writes its pid just after it takes the lock: a sweep started at the same
        # instant may look in between, so it waits a moment for the name to appear.
        holder = ""
        for _ in range(40):
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            if holder:
                break
            time.sleep(0.025)
        holder = holder or "just starting"
        os.close(fd)
        raise AsymbpError(f"another sweep ({holder}) is writing {db}; wait for it to finish or "
                          "stop it first") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    return fd


def label(run: RunSpec) -> str:
    proc = f" [{run.procedure}]" if run.procedure else ""
    return f"{run.method}{proc} on {run.dataset} k={run.lr_mult:g} seed {run.seed}"


def sweep(runs: list[RunSpec], db, *, workers: int = 1, backend: str = "local",
          address: str | None = None, threads: int | None = None, retry_failed: bool = False,
          progress: bool = True, log=None, pack: int | None = None) -> dict:
    """Run every run of `runs` not yet finished in `db`; return counts by final status.

    Arguments:
        runs: from `asymbp.sweep.plan`.
        db: the results database path (created if missing).
        workers: processes (local) or actors (Ray) running at once.
        backend: "local" or "ray" (`address`: a Ray cluster; default a local one).
        threads: torch threads per worker (default: cores // workers, at least 1).
        retry_failed: run the runs stored as failed again (otherwise they are skipped).
        progress: show a tqdm bar (runs done / total, ETA, each worker's run) on stderr.
        log: where one line per finished run goes (default: stdout; None-like False: nowhere).
        pack: at most this many runs of one cell trained as one packed model
            (`asymbp.packed`); 1: one by one; None: `default_pack` (packed on a GPU).
    """
    if int(workers) < 1:
        raise AsymbpError(f"--workers must be >= 1, got {workers}")
    if backend not in BACKENDS:
        raise AsymbpError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    threads = threads or threads_per_worker(workers)
    log = sys.stdout if log is None else log
    from .._provenance import provenance
    from ..store import check, check_writable  # pandas: imported when a sweep starts

    check(db)  # a bad --db stops here, before the lock file is made
    check_writable(db)
    prov = provenance()
    with _locked_store(db) as store:
        store.add_runs(runs)
        by_key = {r.key: r for r in runs}
        status = store.statuses(by_key)
        skip = ("done", "diverged") if retry_failed else ("done", "diverged", "failed")
        todo = [r for r in by_key.values() if status[r.key] not in skip]
        counts = {"planned": len(by_key), "skipped": len(by_key) - len(todo)}
        resumed = sum(1 for r in todo if status[r.key] == "running")
        if log and (counts["skipped"] or resumed):
            print(f"{counts['skipped']} of {len(by_key)} runs already done, diverged or failed "
                  f"in {db}; {resumed} resume from their last epoch checkpoint", file=log,
                  flush=True)
        if not todo:
            return {**counts, **_final_counts(store, by_key)}
        store.set_meta(sweep_pid=os.getpid(), sweep_host=socket.gethostname(),
                       sweep_state="running", sweep_started=time.time())
        ckdir = checkpoint_dir(db)
        ckdir.mkdir(exist_ok=True)
        tasks = [Task(r.key, r.config, str(ckdir / f"{r.key}.pt")) for r in todo]
        size = default_pack(todo) if pack is None else int(pack)
        if backend == "local" and size > 1:
            tasks = packed_tasks(tasks, size)
        writer = _Writer(store, by_key, todo, ckdir, prov, progress, log)
        if backend == "ray":
            events = run_ray(tasks, workers, threads, address)
        else:
            events = run_local(tasks, workers, threads)
        for ev in events:
            writer.write(ev)
        writer.close()
        store.set_meta(sweep_state="finished", sweep_finished=time.time())
        return {**counts, **_final_counts(store, by_key)}


# On a GPU a cell's five runs (the paper's five learning rates) as one packed model: the tiny
# networks leave the device idle between kernel launches, which packing fills (not yet timed on
# a GPU here: `benchmarks/pack_time.py --device cuda` does). On the CPU one by one, in workers:
# pack_time.py on the 2-core EPYC (uSF+BN, cifar network, CIFAR-10 shapes, 1 thread, one
# process) timed a packed cell at 0.86x the runs one by one (5.2 vs 4.5 s per run-epoch):
# the steps are bound by the convolution kernels, which a grouped convolution does not speed
# up; with 2 threads packing looked 1.3-1.8x faster than one by one, but 2 one-thread workers
# were 2.6x (one process's 2 threads scale poorly on these small convolutions).
GPU_PACK = 5


def default_pack(runs: list[RunSpec]) -> int:
    """The pack size when none is given: `GPU_PACK` when every run goes to a GPU, else 1."""
    from ..hardware import resolve_device

    devices = {resolve_device(str(r.config.get("device", "auto"))) for r in runs}
    return GPU_PACK if devices and all(d.startswith("cuda") for d in devices) else 1


def packed_tasks(tasks: list[Task], size: int) -> list[Task | PackTask]:
    """The tasks with the runs of each cell grouped into packs of at most `size` (a group of
    one stays a plain task)."""
    from ..packed import group_cells

    groups = group_cells([t.config for t in tasks], size)
    return [tasks[g[0]] if len(g) == 1 else PackTask(tuple(tasks[i] for i in g))
            for g in groups]


@contextlib.contextmanager
def _locked_store(db):
    """The results database, opened for writing while this process holds its lock."""
    from ..store import Store

    lock = take_lock(db)
    try:
        store = Store(db)
    except BaseException:
        os.close(lock)
        raise
    try:
        yield store
    finally:
        store.close()
        os.close(lock)


class _Writer:
    """What the driver does with each executor event: the store's rows (it is their only
    writer), the progress bar (epochs done / to do, each worker's run) and one log line per
    finished run."""

    def __init__(self, store, by_key: dict[str, RunSpec], todo: list[RunSpec], ckdir: Path,
                 prov: dict, progress: bool, log):
        self.store, self.by_key, self.ckdir, self.prov, self.log = store, by_key, ckdir, prov, log
        self.n_todo, self.n_done, self.running = len(todo), 0, {}  # worker -> run key
        self.done_epochs = {r.key: 0 for r in todo}
        self.done_epochs.update(store.epochs_done(self.done_epochs))
        self.epochs = {r.key: TrainConfig.from_dict(r.config).epochs for r in todo}  # default
        self.bar = None
        if progress:
            from tqdm import tqdm

            total = sum(self.epochs[k] - self.done_epochs[k] for k in self.epochs)
            self.bar = tqdm(total=max(total, 0), unit="epoch", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.05)
        self.show()

    def write(self, ev: tuple) -> None:
        kind, w, key = ev[:3]
        run, done_epochs = self.by_key[key], self.done_epochs
        if kind == "start":
            self.running[w] = key
            # the device the worker resolved and placed the run on (auto -> cuda:3)
            device = ev[3] if len(ev) > 3 else str(run.config.get("device", "auto"))
            self.store.start(key, self.prov["host"], device, self.prov["version"],
                             self.prov["commit"])
        elif kind == "epoch":
            self.store.add_epoch(key, ev[3])
            done_epochs[key] = max(done_epochs[key], int(ev[3]["epoch"]))
            self.advance(1)
        elif kind == "done":
            result = ev[3]
            for row in result.get("epochs", []):  # epochs lost in flight before a kill
                self.store.add_epoch(key, row)
            self.store.finish(key, result)
            (self.ckdir / f"{key}.pt").unlink(missing_ok=True)
            self.advance(self.epochs[key] - done_epochs[key])  # a diverged run ends early
            self.finished(w)
            state = (f"DIVERGED at epoch {result['diverged_epoch']}" if result["diverged"]
                     else f"best {result['best_test_error']:.2f}%")
            self.say(f"{label(run)}: {state} ({result['seconds']:.1f}s)")
        elif kind == "restart":  # its checkpoint could not be loaded: from epoch 1 again
            self.store.reset_epochs(key)
            if self.bar is not None:
                self.bar.total += done_epochs[key]
            done_epochs[key] = 0
            self.say(f"{label(run)}: {ev[3]}")
        elif kind == "note":  # e.g. why a pack's runs train one by one
            self.say(f"{label(run)}: {ev[3]}")
        elif kind == "failed":
            self.store.fail(key, ev[3])
            self.finished(w)
            self.say(f"{label(run)}: FAILED: {ev[3].splitlines()[0]}")
        self.show()

    def finished(self, worker: int) -> None:
        self.n_done += 1
        self.running.pop(worker, None)

    def advance(self, epochs: int) -> None:
        if self.bar is not None and epochs > 0:
            self.bar.update(epochs)

    def show(self) -> None:
        if self.bar is not None:
            self.bar.set_description(f"runs {self.n_done}/{self.n_todo}", refresh=False)
            self.bar.set_postfix_str(" | ".join(
                f"w{w}: {label(self.by_key[k])} e{self.done_epochs[k]}"
                for w, k in sorted(self.running.items())), refresh=True)

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.log)
        elif self.log:
            print(line, file=self.log, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _final_counts(store, by_key) -> dict:
    from ..store import FINISHED

    st = store.statuses(by_key)
    out = {s: 0 for s in ("done", "diverged", "failed", "pending", "running")}
    for s in st.values():
        out[s] = out.get(s, 0) + 1
    out["finished"] = sum(out[s] for s in FINISHED)
    return out
