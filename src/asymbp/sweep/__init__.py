"""Planning and execution of many runs: the cartesian product of methods and datasets.

- `plan` (asymbp.sweep.plan): experiments as data — the `EXPERIMENTS` registry (the paper's
  tables A, B1, B2, C1, C2, BM), `plan(...)` -> `RunSpec`s, run keys, `cell(...)`;
- `local` (asymbp.sweep.local): the one local executor (spawned worker processes, threads per
  worker counted one way) and `train_many(configs)` on it;
- `ray` (asymbp.sweep.ray): the Ray executor;
- `driver` (asymbp.sweep.driver): `sweep(runs, db)`, the only writer of the results database.

    from asymbp.sweep import plan, sweep
    sweep(plan("A", datasets=["mnist5k"], base={"epochs": 3}), "results.db", workers=2)

`asymbp.sweep.plan` and `asymbp.sweep.sweep` are the functions; the modules are imported by
their full names (`from asymbp.sweep.plan import canonical_config`).
"""

from .driver import BACKENDS, checkpoint_dir, label, lock_path, sweep, take_lock
from .local import (WORKER_MALLOC, PackTask, Runner, Task, cores, default_layout, placed_device,
                    run_local, set_aside, threads_per_worker, train_many, worker_device,
                    worker_malloc_env)
from .plan import (EXPERIMENTS, GRID, LR_MULTS, MAX_RUNS, MAX_SEEDS, SEEDS, Experiment, RunSpec,
                   canonical_config, cell, get, parse_floats, parse_list, parse_seeds, plan,
                   register, run_key)
from .ray import gpus_per_worker, run_ray

__all__ = [
    "BACKENDS", "EXPERIMENTS", "GRID", "LR_MULTS", "MAX_RUNS", "MAX_SEEDS", "SEEDS",
    "WORKER_MALLOC", "Experiment", "PackTask", "RunSpec", "Runner", "Task", "canonical_config",
    "cell", "checkpoint_dir", "cores", "default_layout", "get", "gpus_per_worker", "label",
    "lock_path", "parse_floats", "parse_list", "parse_seeds", "placed_device", "plan",
    "register", "run_key", "run_local", "run_ray", "set_aside", "sweep", "take_lock",
    "threads_per_worker", "train_many", "worker_device", "worker_malloc_env",
]
