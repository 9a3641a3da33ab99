"""The published numbers of Liao, Leibo & Poggio (AAAI 2016), shipped as package data.

`published(experiment)` returns the paper's table as a DataFrame (rows: dataset keys, columns:
method strings, values: error %). BioTorch's tables (`biotorch-*`) are here too: their rows are
dataset keys or, for CIFAR-10, (model, optimizer) labels such as "ResNet-20 Adam" (ImageNet: the
model, "ResNet-18"); their columns BioTorch's method names (BP, FA, DFA, uSF, brSF, frSF). Li &
Benna 2024's experiments (`UNPUBLISHED`) have a caption and columns, no numbers.
`PAPER_DATASETS` maps the paper's row names to dataset keys.

pandas is imported inside `published` only: `asymbp.data` reads `PAPER_DATASETS` for its
order, and loading a dataset must not pay for pandas.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from .errors import unknown

if TYPE_CHECKING:
    import pandas as pd

# The paper's row names -> asymbp dataset keys (DESIGN §7)
PAPER_DATASETS = {
    "MNIST": "mnist",
    "CIFAR": "cifar10",
    "CIFAR100": "cifar100",
    "SVHN": "svhn",
    "STL10": "stl10",
    "Cal101": "caltech101",
    "Cal256-101": "caltech256-101",
    "iCub": "icub",
    "Flowers17": "flowers17",
    "Flowers102": "flowers102",
    "PubFig83-ID": "pubfig83-id",
    "SUFR-W-ID": "sufrw-id",
    "LFW-ID": "lfw-id",
    "Scene67": "scene67",
    "TIMIT80": "timit80",
}
DATASET_NAMES = {v: k for k, v in PAPER_DATASETS.items()}

# experiment -> (CSV file, caption)
TABLES = {
    "A": ("table2_experiment_a.csv", "Table 2, Experiment A: strict sign concordance"),
    "B1": ("table3_experiment_b.csv", "Table 3, Experiment B Part 1: redrawn magnitudes, flipped signs"),
    "B2": ("table3_experiment_b.csv", "Table 3, Experiment B Part 2: fixed magnitudes, flipped signs"),
    "C1": ("table4_experiment_c1.csv", "Table 4 left, Experiment C1: fixed random feedback"),
    "C2": ("table4_experiment_c2.csv", "Table 4 right, Experiment C2: frozen random layers"),
    "BM": ("table5_bm_settings.csv", "Table 5: Batch Manhattan settings"),
    # BioTorch (Sanfiz & Akrout 2021), Benchmarks.md at jsalbert/biotorch commit 74fad0d
    "biotorch-mnist": ("biotorch_mnist.csv", "BioTorch: MNIST and Fashion-MNIST, LeNet, SGD"),
    "biotorch-cifar10": ("biotorch_cifar10.csv",
                         "BioTorch: CIFAR-10, LeNet / ResNet-20 / ResNet-56 x SGD / Adam"),
    "biotorch-imagenet": ("biotorch_imagenet.csv", "BioTorch: ImageNet (ILSVRC 2012), ResNet-18"),
}
# BioTorch's dataset names -> asymbp keys
BIOTORCH_DATASETS = {"MNIST": "mnist", "Fashion-MNIST": "fashion-mnist"}

# Datasets that stand in for a row of the tables (not the same data): mnist5k for MNIST. A sweep
# runs a stand-in under its row's protocol; a table compares it with that row's numbers.
STAND_INS = {"mnist5k": "mnist"}

# Li & Benna 2024 (PFA) publish curves, not tables: their experiments have a caption and columns
# but no numbers. The methods of their MNIST and CIFAR-10 figures, of ImageNet's, and of the
# sparse-feedback figure with its feedback densities (`b_conn_density`).
PFA_METHODS = ["BP", "FA", "DFA", "uSF", "PFA", "PFA-o"]
PFA_IMAGENET_METHODS = ["BP", "uSF", "PFA", "PFA-o"]
SPARSE_METHODS = ["FA", "DFA", "uSF", "PFA"]
DENSITIES = (0.05, 0.1, 0.17, 0.3, 0.5, 1.0)


def density_column(method: str, density: float) -> str:
    """The column of `method` with feedback density `density`: "FA d=0.05"."""
    return f"{method} d={density:g}"


UNPUBLISHED = {
    "pfa-mnist": ("Li & Benna 2024: MNIST, 784-512-512-10, SGD", PFA_METHODS),
    "pfa-mnist-sparse": ("Li & Benna 2024: MNIST, 784-512-512-10, sparse feedback (d: the "
                         "fraction of feedback connections kept)",
                         [density_column(m, d) for m in SPARSE_METHODS for d in DENSITIES]),
    "pfa-cifar10": ("Li & Benna 2024: CIFAR-10, ResNet-20, SGD", PFA_METHODS),
    "pfa-imagenet": ("Li & Benna 2024: ImageNet, ResNet-18, SGD", PFA_IMAGENET_METHODS),
}
NO_NUMBERS_NOTE = ("Li & Benna 2024 publish curves, not a table: there are no published "
                   "numbers to show beside ours")


def caption(experiment: str) -> str:
    """The table's caption: the paper's, BioTorch's or Li & Benna's experiment."""
    if experiment in UNPUBLISHED:
        return UNPUBLISHED[experiment][0]
    if experiment not in TABLES:
        raise unknown("experiment", experiment, [*TABLES, *UNPUBLISHED])
    return TABLES[experiment][1]


def row_label(model: str, optimizer: str) -> str:
    """A (model, optimizer) row of BioTorch's CIFAR-10 table as one label: "ResNet-20 Adam"."""
    return f"{model} {optimizer}"


def _columns_for(experiment: str, columns: list[str]) -> list[str]:
    # Table 3 holds both parts of Experiment B: B1 = redrawn (brSF), B2 = fixed (frSF).
    if experiment == "B1":
        return [c for c in columns if not c.startswith("frSF")]
    if experiment == "B2":
        return [c for c in columns if not c.startswith("brSF")]
    return columns


def published(experiment: str) -> pd.DataFrame:
    """The paper's table for `experiment` (A, B1, B2, C1, C2, BM, biotorch-mnist,
    biotorch-cifar10, biotorch-imagenet); index: dataset keys (or BioTorch's row labels)."""
    if experiment not in TABLES:
        raise unknown("experiment", experiment, TABLES)
    import pandas as pd

    name, _ = TABLES[experiment]
    with resources.files("asymbp").joinpath("paper", name).open() as f:
        df = pd.read_csv(f)
    if "optimizer" in df.columns:  # BioTorch's CIFAR-10: rows keyed by (model, optimizer)
        df.insert(0, "dataset", [row_label(m, o) for m, o in zip(df.pop("model"),
                                                                 df.pop("optimizer"))])
    elif "model" in df.columns:  # BioTorch's ImageNet: rows keyed by the model ("ResNet-18")
        df.insert(0, "dataset", df.pop("model"))
    else:
        names = BIOTORCH_DATASETS if experiment.startswith("biotorch") else PAPER_DATASETS
        df["dataset"] = df["dataset"].map(names)
    df = df.set_index("dataset")
    return df[_columns_for(experiment, list(df.columns))]


# Columns an experiment runs beyond its published table: Moskovitz et al. 2018's sSF+WN.
EXTRA_COLUMNS = {"biotorch-cifar10": ["sSF+WN"], "biotorch-imagenet": ["sSF+WN"]}


def columns(experiment: str) -> list[str]:
    """The experiment's method columns, in the paper's order (then any extra ones)."""
    if experiment in UNPUBLISHED:
        return list(UNPUBLISHED[experiment][1])
    return list(published(experiment).columns) + EXTRA_COLUMNS.get(experiment, [])
