"""The Ray executor: the runs of a sweep on a Ray cluster (DESIGN §8).

One actor per worker (`ray.init(address)`, or a local Ray), each a `Runner` (asymbp.sweep.local)
with the same threads rule as local workers; it yields the same events as `run_local`. The
`ray` package is imported only here, when a Ray sweep starts.
"""

from __future__ import annotations

from ..errors import AsymbpError
from .local import Runner, Task, worker_device


def gpus_per_worker(n_gpus: float, workers: int) -> float:
    """Ray's `num_gpus` for one worker: the cluster's GPUs shared evenly, at most one each
    (Ray then sets each actor's CUDA_VISIBLE_DEVICES, and several actors share a GPU)."""
    if n_gpus <= 0:
        raise AsymbpError("the runs ask for device cuda but the Ray cluster has no GPU; run on "
                          "a cluster with GPUs or give --device cpu")
    return min(1.0, n_gpus / max(1, workers))


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
