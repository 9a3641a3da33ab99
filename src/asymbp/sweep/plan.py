"""Experiments as data (DESIGN §6): which (method, dataset) cells, and which runs fill a cell.

An experiment is a list of method columns — exactly the paper's table headers for `A`, `B1`,
`B2`, `C1`, `C2` and `BM` (`asymbp.paper.columns`) — crossed with datasets. Every (method,
dataset) cell expands to one run per learning-rate multiplier × seed (the paper: five
multipliers, one seed) and per *procedure*: a cell normally has one procedure, but Table 2's
`uSF+BM` cell also tried batch 100 for 3 epochs then 500, and reported the better one, so
Experiment A's `uSF+BM` cell runs both. The cell value then takes the best over all of a cell's
runs (`asymbp.report.cells`).

`plan(...)` turns an experiment (or a user grid of methods × datasets) into `RunSpec`s; it
validates every name first, so a mistake is one line before any work is done. `cell(...)` gives
the plain configs of one cell (for `train_many`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from .. import data, models
from ..config import NOT_IN_KEY, PER_RUN, TrainConfig, check_config
from ..errors import AsymbpError, unknown
from ..methods import parse_method
from ..registry import Registry

# The paper's five learning-rate multipliers k (base = 5e-4 × k), DESIGN §6.
LR_MULTS = (100.0, 10.0, 1.0, 0.1, 0.01)
SEEDS = (1,)
GRID = "grid"  # the experiment label of a user grid (methods × datasets)
# Beyond these a sweep is a typo ("1-1000000"), not a plan: refused before a list is built.
MAX_SEEDS = 1000
MAX_RUNS = 100_000


@dataclass(frozen=True)
class Experiment:
    """A paper table: its columns come from the published CSV, `procedures` add runs to a cell.

    Attributes:
        key: A, B1, B2, C1, C2, BM.
        caption: the paper's table caption.
        procedures: method -> {procedure label: config overrides}, for the cells that run more
            than the default procedure (label "" with no overrides is always run).
    """

    key: str
    caption: str
    procedures: dict = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        from ..paper import columns  # pandas: imported when a table is read

        return columns(self.key)

    @property
    def datasets(self) -> list[str]:
        from ..paper import published

        return list(published(self.key).index)


EXPERIMENTS: Registry[Experiment] = Registry("experiment",
                                             "or give --methods and --datasets for a grid")


def register(key: str, procedures: dict | None = None) -> Experiment:
    """Register the paper's table `key` as an experiment (`procedures`: see `Experiment`)."""
    from ..paper import TABLES

    return EXPERIMENTS.register(key, Experiment(key, TABLES[key][1], procedures or {}))


# Table 2: "uSF+BM ... we also tried batch size 100 for 3 epochs, then 500" — the better counts.
register("A", {"uSF+BM": {"batch 100:3,500": {"batch_schedule": "100:3,500"}}})
register("B1")
register("B2")
register("C1")
register("C2")
register("BM")


def get(key: str) -> Experiment:
    """The experiment `key` (case-insensitive), or the one-line error listing the valid ones."""
    return EXPERIMENTS[key]


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its place in the table and the full `TrainConfig` dict."""

    experiment: str
    method: str  # the column label as written (e.g. "uSF+BN+BM@top"), also config["method"]
    dataset: str
    lr_mult: float
    seed: int
    procedure: str  # "" = the default procedure; else a label such as "batch 100:3,500"
    config: dict

    @property
    def key(self) -> str:
        return run_key(self.experiment, self.config)


@functools.cache
def _defaults() -> dict:
    return TrainConfig().to_dict()


def canonical_config(config: dict) -> str:
    """The config as canonical JSON, the input of the run key: sorted keys, execution-only
    fields dropped, and fields at their default dropped too, so that adding a new config field
    (with a default that keeps the old behaviour) leaves existing run keys, and resumes, intact."""
    cfg = TrainConfig.from_dict(dict(config))
    # The fields as they are (json.dumps copies nothing), not to_dict's deep copy: a plan
    # computes one key per run, and asdict was most of a 100 000-run plan's time.
    full = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    defaults = _defaults()
    for k in NOT_IN_KEY:
        full.pop(k, None)
    full = {k: v for k, v in full.items() if k not in defaults or v != defaults[k]}
    return json.dumps(full, sort_keys=True, separators=(",", ":"), default=str)


def run_key(experiment: str, config: dict) -> str:
    """A run's unique key: a hash of its experiment and canonical config. The same command asks
    for the same keys, which is how a sweep resumes and why a duplicate run cannot exist."""
    text = experiment + "\n" + canonical_config(config)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_list(text: str | None, what: str) -> list[str]:
    if text is None:
        return []
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise AsymbpError(f"empty {what} list; give a comma-separated list")
    return items


def parse_floats(text: str | None, what: str, default) -> list[float]:
    if text is None:
        return list(default)
    out = []
    for t in parse_list(text, what):
        try:
            v = float(t)
        except ValueError:
            raise AsymbpError(f"bad {what} {t!r}; expected numbers, e.g. 100,10,1,0.1,0.01") from None
        if not (v > 0 and math.isfinite(v)):
            raise AsymbpError(f"{what} must be a finite number > 0, got {t}")
        out.append(v)
    return list(dict.fromkeys(out))  # "1,1" is one multiplier: each run is planned once


def parse_seeds(text: str | None) -> list[int]:
    """'1', '1,2,3' or '1-5' -> seeds."""
    if text is None:
        return list(SEEDS)
    parts: list[range] = []
    try:
        for t in parse_list(text, "seed"):
            if "-" in t[1:]:
                a, b = t.split("-", 1)
                parts.append(range(int(a), int(b) + 1))
            else:
                parts.append(range(int(t), int(t) + 1))
    except ValueError:
        raise AsymbpError(f"bad seeds {text!r}; expected e.g. 1 or 1,2,3 or 1-5") from None
    count = sum(len(r) for r in parts)  # counted before any list of seeds is built
    if count > MAX_SEEDS:
        raise AsymbpError(f"seeds {text!r} are {count:,} seeds, more than {MAX_SEEDS:,} per "
                          "cell; give a shorter range, e.g. 1-10")
    out = list(dict.fromkeys(s for r in parts for s in r))
    if not out:
        raise AsymbpError(f"bad seeds {text!r}; the range is empty")
    return out


def cell(method: str, dataset: str, seeds: Iterable[int] = SEEDS, lr_mults=LR_MULTS,
         **options) -> list[dict]:
    """The configs of one (method, dataset) cell: every lr multiplier × every seed."""
    return [dict(dataset=dataset, method=method, lr_mult=float(k), seed=int(s), **options)
            for s in seeds for k in lr_mults]


def plan(experiment: str | None = None, methods: list[str] | None = None,
         datasets: list[str] | None = None, lr_mults=LR_MULTS, seeds=SEEDS,
         base: dict | None = None) -> list[RunSpec]:
    """Every run of an experiment or grid, validated.

    Arguments:
        experiment: A, B1, B2, C1, C2, BM; None for a user grid (then `methods` and `datasets`
            are required).
        methods: with an experiment, a subset of its columns; else the grid's methods.
        datasets: dataset keys (default for an experiment: the paper's datasets).
        lr_mults, seeds: each cell's runs.
        base: `TrainConfig` fields shared by every run (epochs, model, protocol, ...).

    Returns:
        `RunSpec`s in a stable order: dataset, method, procedure, multiplier, seed; a run key
        appears once (a repeated multiplier, seed, method or dataset adds no run).
    """
    base = dict(base or {})
    for k in PER_RUN:  # each run's own
        base.pop(k, None)
    if experiment is not None:
        exp = get(experiment)
        label, procedures = exp.key, exp.procedures
        if methods:
            valid = exp.columns
            for m in methods:
                if m not in valid:
                    raise unknown(f"method column of experiment {exp.key}", m, valid)
        else:
            methods = exp.columns
        datasets = datasets or exp.datasets
    else:
        label, procedures = GRID, {}
        if not methods or not datasets:
            raise AsymbpError("give --experiment (A, B1, B2, C1, C2, BM) or both --methods and "
                              "--datasets for a grid")
    for m in methods:
        parse_method(m)
    # Names as registered (`MNIST` is `mnist`): one run, one key, however it was typed.
    datasets = [data.check_key(d) for d in datasets]
    if base.get("model") is not None:
        base["model"] = models.MODELS.canonical(base["model"])
    lr_mults, seeds = _numbers(lr_mults, "learning-rate multiplier"), _numbers(seeds, "seed")
    if not lr_mults or not seeds:
        raise AsymbpError("a sweep needs at least one learning-rate multiplier and one seed")
    methods, datasets = list(dict.fromkeys(methods)), list(dict.fromkeys(datasets))
    cells = sum(1 + len(procedures.get(m, {})) for m in methods) * len(datasets)
    count = cells * len(lr_mults) * len(seeds)
    if count > MAX_RUNS:
        raise AsymbpError(f"the sweep would plan {count:,} runs ({cells} cell procedures x "
                          f"{len(lr_mults)} multipliers x {len(seeds)} seeds), more than "
                          f"{MAX_RUNS:,}; narrow --seeds, --lr-mults, --methods or --datasets")

    runs: dict[str, RunSpec] = {}
    for d in datasets:
        for m in methods:
            for proc, overrides in {"": {}, **procedures.get(m, {})}.items():
                for k in lr_mults:
                    for s in seeds:
                        cfg = {**base, **overrides, "dataset": d, "method": m,
                               "lr_mult": k, "seed": s}
                        run = RunSpec(label, m, d, k, s, proc, cfg)
                        runs.setdefault(run.key, run)  # the same run twice is planned once
    # Every config is checked before the first run starts (cheap: no data is loaded): once per
    # method and procedure, and once per multiplier and seed, so each value is seen.
    checked = set()
    for r in runs.values():
        sigs = {("method", r.method, r.config.get("batch_schedule")), ("lr", r.lr_mult),
                ("seed", r.seed)}
        if not sigs <= checked:
            check_config(TrainConfig.from_dict(r.config))
            checked |= sigs
    return list(runs.values())


def _numbers(values, what: str) -> list:
    """The multipliers (floats) or seeds (ints) of a plan, repeats dropped; nothing rounded
    (a seed 2.9 is an error, not seed 2; numpy integers are ints)."""
    kind = numbers.Integral if what == "seed" else numbers.Real
    out = []
    for i, v in enumerate(values):
        if i == MAX_RUNS:
            raise AsymbpError(f"more than {MAX_RUNS:,} {what}s; give fewer")
        if isinstance(v, bool) or not isinstance(v, kind):
            raise AsymbpError(f"{what}s must be {'ints' if what == 'seed' else 'numbers'}, got "
                              f"{v!r} ({type(v).__name__})")
        out.append(int(v) if what == "seed" else float(v))
    return list(dict.fromkeys(out))
