"""asymbp: backpropagation without weight symmetry.

Drop-in asymmetric layers (`AsymLinear`, `AsymConv2d`), `convert` for any model, every feedback
scheme of Liao, Leibo & Poggio 2016, Moskovitz et al. 2018 and Li & Benna 2024, the paper's
update rules (`asymbp.optim`), networks (`asymbp.models`), datasets (`asymbp.data`), one run
(`asymbp.train.train`) and the experiment system around it.
"""

__version__ = "0.1.0"

from . import feedback, metrics, models, optim  # noqa: E402
from .convert import convert  # noqa: E402
from .errors import AsymbpError  # noqa: E402
from .layers import AsymConv2d, AsymLinear, asym_layers  # noqa: E402
from .methods import MethodSpec, parse_method  # noqa: E402

# The public submodules not imported above, each imported on first use (PEP 562), so that
# `import asymbp` does not pay for pandas, matplotlib or Ray: `asymbp.store.load(db)`,
# `asymbp.train.train(config)`, `asymbp.report` work after a plain `import asymbp`.
SUBMODULES = ("augment", "cli", "config", "data", "distributed", "errors", "execution",
              "feedback", "hardware", "layers", "methods", "metrics", "models", "optim", "paper",
              "registry", "report", "rng", "store", "sweep", "train")


def __getattr__(name: str):
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # also binds it here
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES))


__all__ = [
    "AsymConv2d",
    "AsymLinear",
    "AsymbpError",
    "MethodSpec",
    "asym_layers",
    "convert",
    "feedback",
    "metrics",
    "models",
    "optim",
    "parse_method",
]
