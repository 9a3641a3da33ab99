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
from ..paper import (DENSITIES, PFA_IMAGENET_METHODS, PFA_METHODS, SPARSE_METHODS,
                     density_column)
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
    # BioTorch's experiments (the paper's have none of these): a column label -> its config
    # (a method string and scheme options), a row label -> its config (dataset, model, and as
    # "method_parts" what the row adds to every method: its optimizer, BN), the config of every
    # run, the lr multipliers.
    column_configs: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    lr_mults: tuple | None = None
    # The seeds of every cell unless a sweep gives its own (Li & Benna's: 1-5; else SEEDS).
    seeds: tuple | None = None
    # (row label, column label) -> what that one cell's config changes (BioTorch's per-method
    # learning rates: its LeNet FA and DFA runs are not at the row's lr).
    cell_configs: dict = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        from ..paper import columns  # pandas: imported when a table is read

        return columns(self.key)

    @property
    def datasets(self) -> list[str]:
        """The table's rows: dataset keys, or BioTorch's row labels ("ResNet-20 Adam")."""
        from ..paper import published

        return list(self.rows) or list(published(self.key).index)

    def row_for(self, dataset: str) -> str:
        """The row whose protocol a sweep's `dataset` runs under: the row of that label, else
        the one row of that dataset key (or of the key it stands in for: mnist5k runs the
        mnist row), else the only row there is; the one-line error when there is none or the
        choice is ambiguous."""
        from ..paper import STAND_INS

        if dataset in self.rows:
            return dataset
        try:
            key = data.check_key(dataset)
        except AsymbpError:
            key = None  # neither a row nor a dataset: the error below lists the rows
        hits = [r for r, c in self.rows.items()
                if key is not None and c.get("dataset", r) in (key, STAND_INS.get(key))]
        if not hits and key is not None and len(self.rows) == 1:
            hits = list(self.rows)
        if len(hits) != 1:
            raise unknown(f"row of experiment {self.key}", dataset, list(self.rows),
                          "or a dataset key that one of its rows runs, e.g. mnist5k for mnist"
                          if len(hits) == 0 else f"{dataset} is the dataset of several rows; "
                          "give their labels")
        return hits[0]

    def config(self, column: str, row: str) -> dict:
        """The config of the cell (column, row) before the per-run fields: the experiment's
        base, the row's, the column's; the row's method parts join the column's method."""
        row_cfg = dict(self.rows.get(row, {"dataset": row}))
        update = row_cfg.pop("method_parts", None)
        col_cfg = dict(self.column_configs.get(column, {"method": column}))
        method = col_cfg.pop("method")
        if update is not None:  # "SGD" alone is BP: BP with Adam is "Adam"
            method = update if method == "SGD" else f"{method}+{update}"
        cell_cfg = self.cell_configs.get((row, column), {})
        return {**self.base, **row_cfg, **col_cfg, **cell_cfg, "method": method}


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


def register_biotorch(key: str, rows: dict, base: dict, columns: dict,
                      seeds: tuple | None = None, cells: dict | None = None) -> Experiment:
    """Register an experiment with its own protocol: one of BioTorch's tables or Li & Benna's
    experiments (asymbp.paper.TABLES, UNPUBLISHED); a sweep's learning rate is then absolute
    (base_lr in `base`, one multiplier 1); `seeds`: the cells' own (default: SEEDS); `cells`:
    (row, column) -> that cell's own overrides."""
    from ..paper import caption

    return EXPERIMENTS.register(key, Experiment(key, caption(key), column_configs=columns,
                                                rows=rows, base=base, lr_mults=(1.0,),
                                                seeds=seeds, cell_configs=dict(cells or {})))


# BioTorch's methods with its scaled definitions (asymbp.feedback's scheme options): FA's V is
# fixed Xavier-uniform, uSF's sign(W) is scaled by Xavier's std, brSF/frSF magnitudes are
# |U(-a, a)| with Xavier's a. "SGD" is BP; a row's optimizer joins it ("uSF+Adam").
BIOTORCH_COLUMNS = {
    "BP": {"method": "SGD"},
    "FA": {"method": "RndF", "scheme_options": {"init": "xavier"}},
    "DFA": {"method": "DFA"},
    "uSF": {"method": "uSF", "scheme_options": {"scale": "xavier"}},
    "brSF": {"method": "brSF", "scheme_options": {"magnitude": "xavier"}},
    "frSF": {"method": "frSF", "scheme_options": {"magnitude": "xavier"}},
}
# BioTorch's MNIST protocol (shared/paper/README.md): LeNetMNIST on 32x32 images, SGD momentum
# 0.9, weight decay 1e-3, batch 64, 100 epochs, lr /10 at 50 and 75, the batch-mean loss, Xavier
# init; validation = test, i.e. the paper protocol (best test error over epochs). Its lr is not
# in the README: 0.01 here, an assumption.
register_biotorch(
    "biotorch-mnist",
    rows={"mnist": {"dataset": "mnist"}, "fashion-mnist": {"dataset": "fashion-mnist"}},
    base=dict(model="lenet_mnist", resize=32, base_lr=0.01, momentum=0.9, weight_decay=1e-3,
              batch_size=64, epochs=100, lr_milestones="50:0.1,75:0.1", loss="mean",
              init="xavier", protocol="paper"),
    columns=BIOTORCH_COLUMNS)


def _cifar_rows() -> dict:
    """BioTorch's CIFAR-10 rows: (model, optimizer); the ResNets with batch norm, affine for
    every method as BioTorch's, with running statistics (PyTorch's BN)."""
    rows = {}
    for name, model, bn in (("LeNet", "lenet_cifar", False), ("ResNet-20", "resnet20", True),
                            ("ResNet-56", "resnet56", True)):
        for opt, hyper in (("SGD", dict(base_lr=0.1, momentum=0.9)),
                           ("Adam", dict(base_lr=1e-3, method_parts="Adam"))):
            row = {"dataset": "cifar10", "model": model, **hyper}
            if bn:
                row.update(method_parts="BN+Adam" if opt == "Adam" else "BN", bn_affine="all")
            rows[f"{name} {opt}"] = row
    return rows


# BioTorch's own per-run learning rates where they are not the row's (SGD 0.1, Adam 1e-3): its
# benchmark_configs/cifar10/{le_net,resnet_20}/{sgd,adam}/*.yaml (jsalbert/biotorch, commits
# 04bca8a, 1b2ebbb, 536ea21): LeNet SGD FA 1e-3, DFA 1e-4; LeNet Adam FA 1e-4, DFA 1e-4;
# ResNet-20 SGD DFA 1e-3; every other file is at its row's. There is no ResNet-56 benchmark
# config there: ResNet-56 takes ResNet-20's (an assumption).
BIOTORCH_CIFAR_LRS = {
    ("LeNet SGD", "FA"): 1e-3, ("LeNet SGD", "DFA"): 1e-4,
    ("LeNet Adam", "FA"): 1e-4, ("LeNet Adam", "DFA"): 1e-4,
    ("ResNet-20 SGD", "DFA"): 1e-3, ("ResNet-56 SGD", "DFA"): 1e-3,
}

# 45k train / 5k validation (picks the epoch) / 10k test, crop + flip, batch 128, 250 epochs, lr
# /10 at 100, 150, 200, weight decay 1e-4, the batch-mean loss, Xavier init.
register_biotorch(
    "biotorch-cifar10", rows=_cifar_rows(),
    cells={cell: {"base_lr": lr} for cell, lr in BIOTORCH_CIFAR_LRS.items()},
    base=dict(protocol="honest", val_size=5000, augment="crop-flip", batch_size=128,
              epochs=250, lr_milestones="100:0.1,150:0.1,200:0.1", weight_decay=1e-4,
              loss="mean", init="xavier", bn_stats="running"),
    columns={**BIOTORCH_COLUMNS, "sSF+WN": {"method": "sSF+WN"}})


# BioTorch's ImageNet protocol (shared/paper/README.md): ResNet-18, batch 256, 75 epochs, SGD lr
# 0.1 /10 at 20, 40, 60, momentum 0.9, weight decay 1e-4 (DFA: Adam lr 1e-3, the same steps),
# random-resized crop 224 + flip, test resize 256 + centre crop 224 (the loader's, asymbp.data.
# stream), the batch-mean loss, Xavier init, BN affine with running statistics. BioTorch picks
# the model on ILSVRC's validation set, which is also its test set (ImageNet's test labels are
# not public). Here the validation split is honest: 10 000 training images held out (about 10
# per class, 0.8 % of the training set) pick the epoch, and the 50 000 ILSVRC validation images
# are the test set. Every epoch's test error is recorded as well, so the same runs also give
# BioTorch's own rule (best test error over epochs): `asymbp table --protocol paper`.
register_biotorch(
    "biotorch-imagenet",
    rows={"ResNet-18": {"dataset": "imagenet", "model": "resnet18", "method_parts": "BN",
                        "bn_affine": "all"}},
    base=dict(protocol="honest", val_size=10_000, augment="resized-crop-flip", batch_size=256,
              epochs=75, base_lr=0.1, momentum=0.9, lr_milestones="20:0.1,40:0.1,60:0.1",
              weight_decay=1e-4, loss="mean", init="xavier", bn_stats="running"),
    columns={**BIOTORCH_COLUMNS, "DFA": {"method": "DFA+Adam", "base_lr": 1e-3},
             "sSF+WN": {"method": "sSF+WN"}})


# ---- Li & Benna 2024 (PFA): shared/paper/README.md, from their code's exp_configs -------------
# Every run 5 seeds, Xavier init, BioTorch's scaled uSF and Xavier FA, BioTorch's DFA, PFA with
# expansion alpha = 10 (the PFA scheme's default) and PFA-o (alpha = 1, orthogonal B: the PFA-o
# scheme's defaults).
#
# The weight decay "0.03 in the first epoch, x0.003 after": in their code (a BioTorch fork,
# benchmark/wd_schedulers.py, MultiStepWD with milestones [0]) it is the optimizer's weight
# decay, multiplied by gamma in every parameter group after the first epoch: the decay of ALL
# weights (W, the biases and PFA's learned R alike), not only of the feedback. So it maps onto
# weight_decay=0.03 with wd_milestones "1:0.003" (3e-2 x 3e-3 = 9e-5 after, about the 1e-4 of
# the other methods), and feedback_weight_decay (the learned feedback's decay alone) stays
# unset. CIFAR-10: 5e-3, then x0.02 (= 1e-4); ImageNet (their exp_configs, not in the README):
# 5e-4, then x0.2 (= 1e-4).
PFA_SEEDS = (1, 2, 3, 4, 5)


def _pfa_columns(methods, first_decay: float, gamma: float, density: float | None = None,
                 label=lambda m: m) -> dict:
    """Li & Benna's columns: BioTorch's definitions of BP, FA, DFA, uSF (`BIOTORCH_COLUMNS`),
    PFA and PFA-o with the large first-epoch weight decay; `density`: the fraction of
    feedback connections kept (a scheme option), `label` the column's name."""
    pfa_decay = {"weight_decay": first_decay, "wd_milestones": f"1:{gamma:g}"}
    base = {**BIOTORCH_COLUMNS, "PFA": {"method": "PFA", **pfa_decay},
            "PFA-o": {"method": "PFA-o", **pfa_decay}}
    out = {}
    for m in methods:
        col = dict(base[m])
        if density is not None:
            col["scheme_options"] = {**col.get("scheme_options", {}), "density": float(density)}
        out[label(m)] = col
    return out


# MNIST, 784-512-512-10 (mlp512): 40 epochs, batch 64, SGD lr 0.01 momentum 0.9, weight decay
# 1e-4, lr x0.5 after epochs 20 and 30, the batch-mean loss; the test set validates, as
# BioTorch's MNIST (the paper protocol: the best test error over epochs).
_PFA_MNIST_BASE = dict(model="mlp512", base_lr=0.01, momentum=0.9, weight_decay=1e-4,
                       batch_size=64, epochs=40, lr_milestones="20:0.5,30:0.5", loss="mean",
                       init="xavier", protocol="paper")
register_biotorch("pfa-mnist", rows={"mnist": {"dataset": "mnist"}}, base=_PFA_MNIST_BASE,
                  columns=_pfa_columns(PFA_METHODS, 0.03, 0.003), seeds=PFA_SEEDS)
# The same with sparse feedback: FA, DFA, uSF, PFA at each density (for PFA, of B).
register_biotorch(
    "pfa-mnist-sparse", rows={"mnist": {"dataset": "mnist"}}, base=_PFA_MNIST_BASE,
    columns={c: cfg for d in DENSITIES for c, cfg in _pfa_columns(
        SPARSE_METHODS, 0.03, 0.003, density=d,
        label=lambda m, d=d: density_column(m, d)).items()},
    seeds=PFA_SEEDS)
# CIFAR-10, ResNet-20: BioTorch's SGD protocol (the ResNet-20 SGD row of biotorch-cifar10);
# PFA, PFA-o: weight decay 5e-3 in the first epoch, 1e-4 after.
register_biotorch(
    "pfa-cifar10", rows={"ResNet-20 SGD": _cifar_rows()["ResNet-20 SGD"]},
    base=EXPERIMENTS["biotorch-cifar10"].base,
    columns=_pfa_columns(PFA_METHODS, 5e-3, 0.02), seeds=PFA_SEEDS)
# ImageNet, ResNet-18: BioTorch's ImageNet protocol, biotorch-imagenet's row and base (batch
# 256, 75 epochs, SGD lr 0.1 /10 after 20, 40, 60, momentum 0.9, weight decay 1e-4,
# random-resized crop + flip, BN affine; its honest validation split); PFA, PFA-o (their
# exp_configs): weight decay 5e-4 in the first epoch, x0.2 after.
register_biotorch(
    "pfa-imagenet", rows={"ResNet-18": EXPERIMENTS["biotorch-imagenet"].rows["ResNet-18"]},
    base=EXPERIMENTS["biotorch-imagenet"].base,
    columns=_pfa_columns(PFA_IMAGENET_METHODS, 5e-4, 0.2), seeds=PFA_SEEDS)


def get(key: str) -> Experiment:
    """The experiment `key` (case-insensitive), or the one-line error listing the valid ones."""
    return EXPERIMENTS[key]


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its place in the table and the full `TrainConfig` dict."""

    experiment: str
    method: str  # the column label as written (e.g. "uSF+BN+BM@top"), also config["method"]
    # (BioTorch's columns: the label, e.g. "FA"; config["method"] is its method string)
    dataset: str  # the row: a dataset key, or a BioTorch row label (config["dataset"] the key)
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
         datasets: list[str] | None = None, lr_mults=None, seeds=None,
         base: dict | None = None) -> list[RunSpec]:
    """Every run of an experiment or grid, validated.

    Arguments:
        experiment: A, B1, B2, C1, C2, BM; None for a user grid (then `methods` and `datasets`
            are required).
        methods: with an experiment, a subset of its columns; else the grid's methods.
        datasets: dataset keys (default for an experiment: the paper's datasets); for an
            experiment with rows (BioTorch's, Li & Benna's), row labels, or dataset keys that
            run under a row's protocol (`Experiment.row_for`: mnist5k under the mnist row's).
        lr_mults, seeds: each cell's runs (default: the experiment's, else LR_MULTS, SEEDS).
        base: `TrainConfig` fields shared by every run (epochs, model, protocol, ...); for an
            experiment with its own protocol (BioTorch's), only the fields that differ from
            TrainConfig's defaults override it (the command line gives every field).

    Returns:
        `RunSpec`s in a stable order: dataset, method, procedure, multiplier, seed; a run key
        appears once (a repeated multiplier, seed, method or dataset adds no run).
    """
    base = dict(base or {})
    for k in PER_RUN:  # each run's own
        base.pop(k, None)
    exp = None
    if experiment is not None:
        exp = get(experiment)
        label, procedures = exp.key, exp.procedures
        if exp.base:
            base = {k: v for k, v in base.items() if v != _defaults().get(k)}
        lr_mults = exp.lr_mults if lr_mults is None and exp.lr_mults else lr_mults
        seeds = exp.seeds if seeds is None and exp.seeds else seeds
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
    lr_mults = LR_MULTS if lr_mults is None else lr_mults
    seeds = SEEDS if seeds is None else seeds
    row_of = {}  # a table row (a row label, or a dataset key) -> the experiment's row it runs
    if exp is not None and exp.rows:
        for d in datasets:
            row = exp.row_for(d)
            row_of[d if d == row else data.check_key(d)] = row
    for m in methods:
        if exp is None or m not in exp.column_configs:
            parse_method(m)
    # Names as registered (`MNIST` is `mnist`): one run, one key, however it was typed; an
    # experiment's own rows (BioTorch's model x optimizer) are its names already.
    datasets = [d if exp is not None and d in exp.rows else data.check_key(d) for d in datasets]
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
                        cell_cfg = exp.config(m, row_of.get(d, d)) if exp is not None else {}
                        if row_of.get(d, d) != d:  # a dataset under its row's protocol
                            cell_cfg["dataset"] = d
                        cfg = {"dataset": d, "method": m, **cell_cfg, **base, **overrides,
                               "lr_mult": k, "seed": s}
                        if cell_cfg.get("scheme_options") and base.get("scheme_options"):
                            # --scheme-option adds to a column's options (BioTorch's scales)
                            cfg["scheme_options"] = {**cell_cfg["scheme_options"],
                                                     **base["scheme_options"]}
                        run = RunSpec(label, m, d, k, s, proc, cfg)
                        runs.setdefault(run.key, run)  # the same run twice is planned once
    # Every config is checked before the first run starts (cheap: no data is loaded): once per
    # method and procedure, and once per multiplier and seed, so each value is seen.
    checked = set()
    for r in runs.values():
        sigs = {("method", r.method, r.dataset, r.config.get("batch_schedule")),
                ("lr", r.lr_mult),
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
