"""The cartesian product of methods and datasets, run by local processes or Ray (DESIGN §6, §8).

`sweep(runs, db)` is the driver: it records every planned run in the results database, skips the
finished ones, hands the rest to an executor and writes what comes back — it is the only writer
of the database. An executor is a generator of events, the same whichever runs the work:

    ("start", worker, run_key, device)   a worker began (or resumed) the run on `device`
    ("epoch", worker, run_key, row)      an epoch finished (the row `train` gives `on_epoch`)
    ("done", worker, run_key, result)    the run's result dict (`train`'s return value)
    ("failed", worker, run_key, error)   an exception, as text
    ("restart", worker, run_key, line)   the run's checkpoint could not be loaded: it was moved
                                         aside and the run starts again from epoch 1

- `local`: worker processes (spawned), each with `cores // workers` torch threads so the cores
  are not oversubscribed; each loads a dataset once and keeps it for all its runs.
- `ray`: one actor per worker on a Ray cluster (`ray.init(address)`), same threads rule.

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

import os
import queue
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .errors import AsymbpError
from .experiments import RunSpec

BACKENDS = ("local", "ray")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, cores() // max(1, workers))


def checkpoint_dir(db) -> Path:
    return Path(str(db) + ".runs")


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


@dataclass(frozen=True)
class Task:
    """What a worker needs for one run (picklable)."""

    key: str
    config: dict
    checkpoint: str


# ---- what a worker does (shared by both executors) -----------------------------------------


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
    from .hardware import resolve_device

    return placed_device(resolve_device(device, n_gpus), wid, n_gpus)


def gpus_per_worker(n_gpus: float, workers: int) -> float:
    """Ray's `num_gpus` for one worker: the cluster's GPUs shared evenly, at most one each
    (Ray then sets each actor's CUDA_VISIBLE_DEVICES, and several actors share a GPU)."""
    if n_gpus <= 0:
        raise AsymbpError("the runs ask for device cuda but the Ray cluster has no GPU; run on "
                          "a cluster with GPUs or give --device cpu")
    return min(1.0, n_gpus / max(1, workers))


class Runner:
    """A worker's state: its torch threads, its GPU (if any) and the datasets it has loaded
    (once each)."""

    def __init__(self, threads: int, wid: int = 0):
        import torch

        torch.set_num_threads(threads)
        self.wid = wid
        self.n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.datasets: dict = {}

    def dataset(self, config: dict):
        from . import data

        key = (config["dataset"], config.get("data_dir"), config.get("data_seed", 0))
        if key not in self.datasets:
            self.datasets[key] = data.load(key[0], key[1], seed=key[2])
        return self.datasets[key]

    def device(self, config: dict) -> str:
        return worker_device(str(config.get("device", "auto")), self.wid, self.n_gpus)

    def run(self, task: Task, emit) -> tuple:
        """Train `task`, streaming epochs through `emit(event)`; return the final event."""
        from .execution import CheckpointError
        from .train import train

        config = dict(task.config)
        config["device"] = self.device(config)

        def attempt():
            return train(config, checkpoint=task.checkpoint, data=self.dataset(config),
                         on_epoch=lambda row: emit(("epoch", task.key, row)))

        try:
            try:
                result = attempt()
            except CheckpointError as err:
                # Left in place, a corrupt checkpoint fails its run on every rerun of the sweep.
                aside = set_aside(err.path, err.problem)
                emit(("restart", task.key, f"checkpoint {err.path} {err.problem}; moved it to "
                                           f"{aside.name} and started the run again"))
                result = attempt()
            return ("done", task.key, result)
        except Exception as err:  # noqa: BLE001 - any failure is recorded, the sweep goes on
            if isinstance(err, AsymbpError):
                return ("failed", task.key, str(err))
            return ("failed", task.key,
                    f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}")


# ---- local worker processes ------------------------------------------------------------------


def _orphan_watchdog(parent: int) -> None:
    """End this worker when the driver is gone (e.g. `kill -9`), so no orphan keeps training."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _local_worker(wid: int, tasks, events, threads: int, parent: int) -> None:
    threading.Thread(target=_orphan_watchdog, args=(parent,), daemon=True).start()
    runner = Runner(threads, wid)
    while (task := tasks.get()) is not None:
        events.put(("start", wid, task.key, runner.device(task.config)))
        kind, key, payload = runner.run(task, lambda ev: events.put((ev[0], wid, *ev[1:])))
        events.put((kind, wid, key, payload))


def run_local(tasks: list[Task], workers: int, threads: int):
    """Run `tasks` in `workers` spawned processes; yield events (see the module docstring)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    task_q, event_q = ctx.Queue(), ctx.Queue()
    for t in tasks:
        task_q.put(t)
    workers = max(1, min(workers, len(tasks)))
    for _ in range(workers):
        task_q.put(None)
    procs = [ctx.Process(target=_local_worker, args=(w, task_q, event_q, threads, os.getpid()),
                         daemon=True, name=f"asymbp-worker-{w}") for w in range(workers)]
    from .batched import worker_malloc_env

    with worker_malloc_env():
        for p in procs:
            p.start()
    current: dict[int, str] = {}
    remaining = len(tasks)
    try:
        while remaining:
            try:
                ev = event_q.get(timeout=1.0)
            except queue.Empty:
                for w, p in enumerate(procs):
                    if not p.is_alive() and w in current:
                        remaining -= 1
                        yield ("failed", w, current.pop(w),
                               f"worker process died (exit code {p.exitcode})")
                if not any(p.is_alive() for p in procs):
                    break  # what is left stays pending for the next sweep
                continue
            kind, w, key = ev[:3]
            if kind == "start":
                current[w] = key
            elif kind in ("done", "failed"):
                current.pop(w, None)
                remaining -= 1
            yield ev
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)


# ---- Ray ---------------------------------------------------------------------------------------


class _RayWorker:
    """A Ray actor: a `Runner` that streams epochs through a Ray queue."""

    def __init__(self, wid: int, threads: int, events):
        self.wid, self.events, self.runner = wid, events, Runner(threads, wid)

    def run(self, task: Task):
        kind, key, payload = self.runner.run(
            task, lambda ev: self.events.put((ev[0], self.wid, *ev[1:])))
        return (kind, self.wid, key, payload)


def run_ray(tasks: list[Task], workers: int, threads: int, address: str | None = None):
    """Run `tasks` on `workers` Ray actors (a local Ray unless `address`, or one already
    initialised); yield the same events as `run_local`."""
    import ray
    from ray.util.queue import Empty, Queue

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False,
                 configure_logging=False)
    events = Queue()
    workers = max(1, min(workers, len(tasks)))
    gpus = 0.0
    devices = {str(t.config.get("device", "auto")) for t in tasks}
    cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    if any(d.startswith("cuda") for d in devices) or ("auto" in devices and cluster_gpus > 0):
        gpus = gpus_per_worker(cluster_gpus, workers)
    actor = ray.remote(num_cpus=threads, num_gpus=gpus)(_RayWorker)
    actors = [actor.remote(w, threads, events) for w in range(workers)]
    todo, inflight, idle = list(tasks), {}, list(range(workers))[::-1]

    def drain():
        while True:
            try:
                yield events.get_nowait()
            except Empty:
                return

    try:
        while todo or inflight:
            while idle and todo:
                w, t = idle.pop(), todo.pop(0)
                inflight[actors[w].run.remote(t)] = (w, t.key)
                # an actor with GPUs sees one (its own, or a share of it) as `cuda`
                yield ("start", w, t.key,
                       worker_device(str(t.config.get("device", "auto")), w, int(gpus > 0)))
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            yield from drain()
            for ref in ready:
                w, key = inflight.pop(ref)
                try:
                    ev = ray.get(ref)
                except ray.exceptions.RayError as err:
                    ev = ("failed", w, key, f"Ray worker failed: {str(err).splitlines()[0]}")
                    actors[w] = actor.remote(w, threads, events)
                yield from drain()
                yield ev
                idle.append(w)
    finally:
        for a in actors:
            ray.kill(a)
        ray.kill(events.actor)


# ---- the driver ------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        holder = os.read(fd, 200).decode(errors="replace").strip() or "just starting"
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
          progress: bool = True, log=None) -> dict:
    """Run every run of `runs` not yet finished in `db`; return counts by final status.

    Arguments:
        runs: from `asymbp.experiments.plan`.
        db: the results database path (created if missing).
        workers: processes (local) or actors (Ray) running at once.
        backend: "local" or "ray" (`address`: a Ray cluster; default a local one).
        threads: torch threads per worker (default: cores // workers, at least 1).
        retry_failed: run the runs stored as failed again (otherwise they are skipped).
        progress: show a tqdm bar (runs done / total, ETA, each worker's run) on stderr.
        log: where one line per finished run goes (default: stdout; None-like False: nowhere).
    """
    if int(workers) < 1:
        raise AsymbpError(f"--workers must be >= 1, got {workers}")
    if backend not in BACKENDS:
        raise AsymbpError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    threads = threads or threads_per_worker(workers)
    log = sys.stdout if log is None else log
    from ._provenance import provenance
    from .store import Store, check, check_writable

    check(db)  # a bad --db stops here, before the lock file is made
    check_writable(db)
    prov = provenance()
    lock = take_lock(db)
    try:
        store = Store(db)
    except BaseException:
        os.close(lock)
        raise
    try:
        store.add_runs(runs)
        by_key = {r.key: r for r in runs}
        status = store.statuses(by_key)
        skip = ("done", "diverged") if retry_failed else ("done", "diverged", "failed")
        todo = [r for r in by_key.values() if status[r.key] not in skip]
        counts = {"planned": len(by_key), "skipped": len(by_key) - len(todo)}
        resumed = sum(1 for r in todo if status[r.key] == "running")
        if log and (counts["skipped"] or resumed):
            print(f"{counts['skipped']} of {len(by_key)} runs already done, diverged or failed in {db}; "
                  f"{resumed} resume from their last epoch checkpoint", file=log, flush=True)
        if not todo:
            return {**counts, **_final_counts(store, by_key)}
        store.set_meta(sweep_pid=os.getpid(), sweep_host=socket.gethostname(),
                       sweep_state="running", sweep_started=time.time())
        ckdir = checkpoint_dir(db)
        ckdir.mkdir(exist_ok=True)
        tasks = [Task(r.key, r.config, str(ckdir / f"{r.key}.pt")) for r in todo]
        done_epochs = {r.key: 0 for r in todo}
        for key, n in store.con.execute("SELECT run_key, epochs_done FROM runs").fetchall():
            if key in done_epochs:
                done_epochs[key] = n
        total_epochs = sum(int(r.config.get("epochs", 65)) - done_epochs[r.key] for r in todo)

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=max(total_epochs, 0), unit="epoch", file=sys.stderr,
                       dynamic_ncols=True, smoothing=0.05)
        n_done, running = 0, {}

        def show():
            if bar is not None:
                bar.set_description(f"runs {n_done}/{len(todo)}", refresh=False)
                bar.set_postfix_str(" | ".join(
                    f"w{w}: {label(by_key[k])} e{done_epochs[k]}"
                    for w, k in sorted(running.items())), refresh=True)

        def say(line):
            if bar is not None:
                bar.write(line, file=log)
            elif log:
                print(line, file=log, flush=True)

        if backend == "ray":
            events = run_ray(tasks, workers, threads, address)
        else:
            events = run_local(tasks, workers, threads)
        show()
        for ev in events:
            kind, w, key = ev[:3]
            run = by_key[key]
            if kind == "start":
                running[w] = key
                # the device the worker resolved and placed the run on (auto -> cuda:3)
                device = ev[3] if len(ev) > 3 else str(run.config.get("device", "auto"))
                store.start(key, prov["host"], device, prov["version"], prov["commit"])
            elif kind == "epoch":
                store.add_epoch(key, ev[3])
                done_epochs[key] = max(done_epochs[key], int(ev[3]["epoch"]))
                if bar is not None:
                    bar.update(1)
            elif kind == "done":
                result = ev[3]
                for row in result.get("epochs", []):  # epochs lost in flight before a kill
                    store.add_epoch(key, row)
                store.finish(key, result)
                (ckdir / f"{key}.pt").unlink(missing_ok=True)
                left = int(run.config.get("epochs", 65)) - done_epochs[key]
                if bar is not None and left > 0:
                    bar.update(left)  # a diverged run ends early
                n_done += 1
                running.pop(w, None)
                state = (f"DIVERGED at epoch {result['diverged_epoch']}" if result["diverged"]
                         else f"best {result['best_test_error']:.2f}%")
                say(f"{label(run)}: {state} ({result['seconds']:.1f}s)")
            elif kind == "restart":  # its checkpoint could not be loaded: from epoch 1 again
                store.reset_epochs(key)
                if bar is not None:
                    bar.total += done_epochs[key]
                done_epochs[key] = 0
                say(f"{label(run)}: {ev[3]}")
            elif kind == "failed":
                store.fail(key, ev[3])
                n_done += 1
                running.pop(w, None)
                say(f"{label(run)}: FAILED: {ev[3].splitlines()[0]}")
            show()
        if bar is not None:
            bar.close()
        store.set_meta(sweep_state="finished", sweep_finished=time.time())
        return {**counts, **_final_counts(store, by_key)}
    finally:
        store.close()
        os.close(lock)


def _final_counts(store, by_key) -> dict:
    from .store import FINISHED

    st = store.statuses(by_key)
    out = {s: 0 for s in ("done", "diverged", "failed", "pending", "running")}
    for s in st.values():
        out[s] = out.get(s, 0) + 1
    out["finished"] = sum(out[s] for s in FINISHED)
    return out
