"""What defines a run: `TrainConfig`, each field declared once (DESIGN §6), and its checks.

A field is declared with `option(default, help, ...)`, nanoGPT-style: its default, its help text
(which is also the command line's, `asymbp.cli.run` generates one option per field), its choices,
its metavar and its *role*:

- `RUN` (most fields): what the run computes. In the run key; a checkpoint resumes only a run
  with the same value.
- `EXECUTION`: where or how fast the run executes, not what it computes (device, data_dir,
  compile, channels_last, eval_batch_size). Not in the run key, free on resume.
- `RECORD`: what is recorded beside the result (alignment). In the run key — keys written
  before the roles existed must not change — but free on resume.

`NOT_IN_KEY` (the run key's exclusions, `asymbp.sweep.plan.canonical_config`) and `RESUME_FREE`
(what may differ when a checkpoint resumes, `asymbp.execution`) are derived from the roles, so
they cannot drift apart. `PER_RUN` are the fields a sweep sets for each run of its grid
(dataset, method, lr_mult, seed); the sweep's command line has plural options for them instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass

from . import data as datasets
from . import models
from .errors import AsymbpError, unknown
from .hardware import check_device_name
from .methods import MethodSpec, parse_method
from .optim import adam_betas

# ---- the choices, typed once (used by check_config and by the command line) ------------------

# How the reported number is picked (DESIGN §6): "paper" validates on the test split, "honest"
# holds a validation split out of the training set.
PROTOCOLS = ("paper", "honest")
# Test-time BN statistics: the paper's post-epoch pass, or the usual running averages.
BN_STATS = ("paper", "running")
# BN's learnable scale and shift: the method's rule (the paper: BP only) or every method's
# (BioTorch's ResNets).
BN_AFFINE = ("method", "all")
# Experiment C2: bottom = the last layer random and frozen, top = every layer but the last.
FREEZE = ("none", "bottom", "top")
PRECISIONS = ("fp32", "bf16")
# The training objective over a mini-batch: Liao et al.'s sum (their learning rates apply as
# printed) or the mean (PyTorch's default, BioTorch's).
LOSSES = ("sum", "mean")
# The weights' initialisation: each network's own (torch's defaults), or BioTorch's Xavier.
INITS = ("default", "xavier")
# Training-batch augmentation on the device (asymbp.augment): CIFAR's pad-4 crop + flip,
# ImageNet's random-resized crop + flip (to the images' own size).
AUGMENTS = ("none", "crop-flip", "resized-crop-flip")
# torch.compile's modes (the `compile` field takes these, or True for "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# ---- roles ----------------------------------------------------------------------------------

RUN = "run"
EXECUTION = "execution"
RECORD = "record"


def option(default=dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING,
           choices: tuple[str, ...] | None = None, metavar: str | None = None,
           role: str = RUN, per_run: bool = False, cli: bool = True,
           label: str | None = None) -> dataclasses.Field:
    """A `TrainConfig` field: `dataclasses.field` with its description in `metadata`.

    Arguments:
        default, factory: the default value, or a function that makes it (a dict).
        help: what the field means, in the words of `--help`.
        choices: the valid values (checked by `check_config`, offered by the command line).
        metavar: the value's name in `--help` (default: the flag's name, upper case).
        role: RUN, EXECUTION or RECORD (see the module docstring).
        per_run: a sweep sets it per run (only `asymbp run` has an option for it).
        cli: whether the command line has an option for it.
        label: the field's name in an "unknown ..." error (default: the field's name).
    """
    if role not in (RUN, EXECUTION, RECORD):
        raise ValueError(f"unknown role {role!r}")
    metadata = {"help": help, "choices": choices, "metavar": metavar, "role": role,
                "per_run": per_run, "cli": cli, "label": label}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults are the paper's protocol (DESIGN §6)."""

    # -- what is trained (a sweep sets these per run) --
    dataset: str = option("mnist5k", "dataset key (see 'asymbp datasets') or npz:PATH",
                          per_run=True)
    method: str = option("SGD", "method string (see 'asymbp methods'), e.g. SGD, uSF+BN+BM, "
                                "brSF-25+BN+BM, RndF+BN", per_run=True)
    lr_mult: float = option(1.0, "learning-rate multiplier k: lr = base_lr x k; the paper sweeps "
                                 "100, 10, 1, 0.1, 0.01", metavar="K", per_run=True)
    seed: int = option(1, "seed of the initialisation, batch order and feedback draws",
                       per_run=True)
    model: str | None = option(None, f"network key ({', '.join(models.MODELS)}); default: the "
                                     "dataset's Table-1 network")
    # -- the optimisation --
    epochs: int = option(65, "epochs; the paper's lr schedule (base, /10 after 50/65, /100 "
                             "after 60/65; without --lr-milestones) scales to it")
    batch_size: int = option(100, "mini-batch size")
    # Table 2's uSF+BM cell also tried batch 100 for 3 epochs, then 500.
    batch_schedule: str | None = option(
        None, "batch-size schedule, e.g. '100:3,500' = 100 for 3 epochs then 500 (default: "
              "--batch-size every epoch)", metavar="SPEC")
    base_lr: float = option(5e-4, "base learning rate before the multiplier")
    loss: str = option("sum", "the cross-entropy over a mini-batch: sum (the paper) or mean "
                              "(PyTorch, BioTorch); the reported loss is per example either way",
                       choices=LOSSES, label="loss reduction")
    weight_decay: float = option(5e-4, "weight decay d; the paper does not state it, this is "
                                       "MatConvNet's")
    # Step schedules as (epoch m, factor γ) pairs, torch's MultiStepLR: after epoch m the value
    # is multiplied by γ. BioTorch: lr "100:0.1,150:0.1,200:0.1"; PFA (Li & Benna 2024): weight
    # decay "1:0.02". None: the paper's lr schedule, a constant weight decay.
    lr_milestones: str | None = option(
        None, "lr steps 'M:GAMMA,...': after epoch M multiply the lr by GAMMA, e.g. "
              "'100:0.1,150:0.1' (default: the paper's schedule, scaled to --epochs)",
        metavar="SPEC")
    wd_milestones: str | None = option(
        None, "weight-decay steps 'M:GAMMA,...', e.g. '1:0.02' (default: constant)",
        metavar="SPEC")
    momentum: float = option(0.9, "momentum m (SGD and Batch Manhattan)")
    # Adam's: (β1, β2) as text "B1,B2" (the command line's form) or a pair of numbers.
    betas: str | tuple = option("0.9,0.999", "Adam's (beta1, beta2)", metavar="B1,B2")
    eps: float = option(1e-8, "Adam's epsilon")
    # Li & Benna 2024 align PFA's and KP's V with W through a large first-epoch weight decay.
    feedback_weight_decay: str | None = option(
        None, "weight decay of learned feedback (KP, PFA): first epoch, then after, e.g. "
              "5e-3,1e-4 (default: the weights' decay)", metavar="FIRST,AFTER")
    init: str = option("default", "weight initialisation: default (each network's own) or "
                                  "xavier (Xavier-uniform weights, zero biases: BioTorch)",
                       choices=INITS, label="initialisation")
    augment: str = option("none", "training-batch augmentation on the device: none, crop-flip "
                                  "(pad 4, random crop, horizontal flip: CIFAR) or "
                                  "resized-crop-flip (random-resized crop + flip: ImageNet)",
                          choices=AUGMENTS, label="augmentation")
    resize: int | None = option(None, "resize every image once, before training, to SIZE "
                                      "(the shorter side; BioTorch's MNIST LeNet: 32)",
                                metavar="SIZE")
    # -- the protocol --
    protocol: str = option("paper", "paper: best test error over epochs; honest: a validation "
                                    "split picks the epoch", choices=PROTOCOLS, label="protocol")
    val_fraction: float = option(0.1, "validation share of the training set, honest protocol")
    # BioTorch's CIFAR-10: 45 000 train / 5 000 validation of the 50 000.
    val_size: int | None = option(None, "validation examples held out of the training set, "
                                        "honest protocol (default: val-fraction of it)",
                                  metavar="N")
    freeze: str = option("none", "Experiment C2: bottom = last layer random and frozen, top = "
                                 "all but the last; a method's @bottom/@top also sets it",
                         choices=FREEZE, label="freeze setting")
    bn_stats: str = option("paper", "test-time BN statistics: paper (after each epoch a pass "
                                    "over bn-stat-batches training batches, an EMA with factor "
                                    "bn-stat-alpha) or running averages",
                           choices=BN_STATS, label="BN statistics mode")
    bn_affine: str = option("method", "BN's learnable scale and shift: method (only BP's, the "
                                      "paper's) or all (every method's, BioTorch's)",
                            choices=BN_AFFINE, label="BN affine rule")
    bn_stat_batches: int = option(20, "training batches of the paper's post-epoch "
                                      "BN-statistics pass", metavar="N")
    bn_stat_alpha: float = option(0.05, "EMA factor of the paper's post-epoch BN-statistics "
                                        "pass", metavar="ALPHA")
    data_seed: int = option(0, "seed of the sampled classes and splits of the paper's datasets "
                               "and of the honest validation split", metavar="SEED")
    # The loss of 1e4 per example is logits 1e4 apart: the weights have blown up, whatever the
    # error rate says. Chance level is ln C (2.3 for 10 classes, 6.9 for 1000); the paper's grid
    # (k <= 100) stays within a few times that, and even k = 1e5 with BN+BM stayed under 1e3
    # on a toy problem.
    diverge_loss: float = option(1e4, "the run has diverged (and stops) at the first epoch "
                                      "whose mean per-example training loss exceeds this, as "
                                      "for a NaN/inf loss; inf: only a NaN/inf loss",
                                 metavar="LOSS")
    # A RUN field: a synthetic run has its own run key, never a real one's.
    synthetic: int | None = option(None, "random data of the dataset's shapes, at most N "
                                         "training and N test examples (0: its sizes); for "
                                         "timing and smoke tests", metavar="N", cli=False)
    # -- execution (not in the run key) --
    device: str = option("auto", "torch device: auto, cpu, cuda, cuda:1, mps (default: auto: "
                                 "CUDA when there is a GPU, else the CPU; MPS only by name); in "
                                 "a sweep a bare 'cuda' or 'auto' spreads the workers over the "
                                 "visible GPUs", role=EXECUTION)
    amp: str = option("fp32", "precision: bf16 autocast or fp32", choices=PRECISIONS,
                      label="precision")
    # "reduce-overhead" also captures CUDA graphs on a GPU (static shapes: the batch size).
    compile: bool | str = option(False, "torch.compile the model (default: off); MODE: "
                                        + ", ".join(COMPILE_MODES) + " (no MODE: default; "
                                        "reduce-overhead adds CUDA graphs on a GPU)",
                                 choices=COMPILE_MODES, metavar="MODE", role=EXECUTION,
                                 label="compile mode")
    # The same math, 1.5x faster epochs of the mnist network on CPU (oneDNN convolutions and
    # pooling); only float rounding differs.
    channels_last: bool = option(True, "NHWC memory format for images: faster convolutions on "
                                       "CPU, the same math", role=EXECUTION)
    # None = 250 on CPU (activations that stay in cache: a 1000-image batch of the mnist network
    # took twice as long per image), 1000 on a GPU.
    eval_batch_size: int | None = option(None, "evaluation batch size (default: 250 on CPU, "
                                               "1000 on a GPU)", metavar="N", role=EXECUTION)
    data_dir: str | None = option(None, "data root (default: $ASYMBP_DATA or ~/.cache/asymbp)",
                                  role=EXECUTION)
    # Streamed datasets (ImageNet) only: each example's crop is seeded by (seed, epoch, index),
    # so the number of workers changes the speed, never the batches.
    loader_workers: int | None = option(None, "loader processes decoding a streamed dataset's "
                                              "images (ImageNet; default: min(8, cores); 0: "
                                              "in the training process)", metavar="N",
                                        role=EXECUTION)
    # -- the scheme --
    # Weight mirrors (WM): after every `mirror_every` training steps, `mirror_steps` mirror
    # steps (asymbp.feedback.mirror_step), and `mirror_warmup` mirror steps before the first
    # training step; ignored by every other scheme.
    mirror_every: int = option(1, "WM (weight mirrors): mirror steps after every N training "
                                  "steps", metavar="N")
    mirror_steps: int = option(1, "WM: mirror steps each time", metavar="N")
    mirror_warmup: int = option(0, "WM: mirror steps before the first training step",
                                metavar="N")
    scheme_options: dict = option(help="extra options of the feedback scheme", factory=dict,
                                  cli=False)
    # -- what is recorded --
    alignment: bool = option(True, "record the per-epoch V-W and error-signal angles",
                             role=RECORD)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown_keys = sorted(set(d) - names)
        if unknown_keys:
            raise AsymbpError(f"unknown config key(s) {', '.join(unknown_keys)}; valid: "
                              f"{', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = dataclasses.fields(TrainConfig)
# Derived from the roles (one declaration each).
NOT_IN_KEY = tuple(f.name for f in FIELDS if f.metadata["role"] == EXECUTION)
RESUME_FREE = tuple(f.name for f in FIELDS if f.metadata["role"] != RUN)
PER_RUN = tuple(f.name for f in FIELDS if f.metadata["per_run"])


@functools.cache
def field_types() -> dict[str, tuple[type, ...]]:
    """Each field's accepted types from its annotation (`int | None` -> (int, NoneType)); the
    annotations are strings (`from __future__ import annotations`)."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: typing.get_args(hints[f.name]) or (hints[f.name],) for f in FIELDS}


# ---- the checks -------------------------------------------------------------------------------


def check_config(cfg: TrainConfig) -> MethodSpec:
    """Validate a config before any work is done; return its parsed method."""
    if not isinstance(cfg, TrainConfig):
        raise AsymbpError(f"a run's config must be a TrainConfig or a dict of its fields, got "
                          f"{_short(cfg)} ({type(cfg).__name__})")
    check_types(cfg)
    spec = parse_method(cfg.method, **cfg.scheme_options)
    datasets.check_key(cfg.dataset)
    if cfg.model is not None and cfg.model not in models.MODELS:
        raise unknown("model", cfg.model, models.MODELS)
    if not _positive(cfg.lr_mult):
        raise AsymbpError(f"learning-rate multiplier must be a finite number > 0, got "
                          f"{cfg.lr_mult}; the paper uses 100, 10, 1, 0.1, 0.01")
    if not _positive(cfg.base_lr):
        raise AsymbpError(f"base learning rate must be a finite number > 0, got {cfg.base_lr}")
    if not 0 <= cfg.momentum < 1:  # also false for NaN; momentum 1 never forgets a gradient
        raise AsymbpError(f"momentum must be in [0, 1), got {cfg.momentum}; the paper uses 0.9")
    if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        raise AsymbpError(f"weight decay must be a finite number >= 0, got {cfg.weight_decay}")
    for name in ("seed", "data_seed"):
        value = getattr(cfg, name)
        if not 0 <= value < 2**63:  # numpy's generators take no negative seed, torch no larger
            raise AsymbpError(f"{name} must be in [0, 2**63), got {value}")
    if cfg.epochs < 1:
        raise AsymbpError(f"epochs must be >= 1, got {cfg.epochs}")
    eval_batch = cfg.eval_batch_size
    if cfg.batch_size < 1 or (eval_batch is not None and eval_batch < 1):
        raise AsymbpError(f"batch sizes must be >= 1, got {cfg.batch_size} (training), "
                          f"{eval_batch} (evaluation)")
    check_choices(cfg)
    if spec.freeze != "none" and cfg.freeze not in ("none", spec.freeze):
        raise AsymbpError(f"method {cfg.method!r} freezes '{spec.freeze}' but freeze="
                          f"{cfg.freeze!r} was also given; give one of them")
    if cfg.bn_stat_batches < 0 or not 0 < cfg.bn_stat_alpha <= 1:
        raise AsymbpError(f"BN statistics need >= 0 batches and 0 < alpha <= 1, got "
                          f"{cfg.bn_stat_batches} batches, alpha {cfg.bn_stat_alpha}")
    if spec.bn and cfg.bn_stats == "paper" and cfg.bn_stat_batches < 1:
        # The paper's BN layers keep no running statistics during training (momentum 0): the
        # post-epoch pass is their only source, and with 0 batches the test uses mean 0, var 1.
        # 0 batches is fine without BN or with bn_stats='running', where no pass is run.
        raise AsymbpError(f"method {cfg.method!r} has batch norm, whose test-time statistics "
                          "come from the post-epoch pass over bn_stat_batches training batches "
                          "(bn_stats='paper'); with 0 the test would use mean 0, variance 1; "
                          "give bn_stat_batches >= 1 (--bn-stat-batches; the paper: 20) or "
                          "bn_stats='running' (--bn-stats running)")
    if cfg.val_size is not None and (cfg.protocol != "honest" or cfg.val_size < 1):
        raise AsymbpError(f"val_size {cfg.val_size} needs protocol honest and >= 1 examples; "
                          "the paper protocol holds no validation split out")
    if cfg.protocol == "honest" and not 0 < cfg.val_fraction < 1:
        raise AsymbpError(f"val_fraction must be in (0, 1), got {cfg.val_fraction}")
    parse_betas(cfg.betas)
    if cfg.synthetic is not None and cfg.synthetic < 0:
        raise AsymbpError(f"synthetic must be >= 0 examples (0: the dataset's sizes), got "
                          f"{cfg.synthetic}")
    if cfg.loader_workers is not None and cfg.loader_workers < 0:
        raise AsymbpError(f"loader_workers must be >= 0 processes, got {cfg.loader_workers}; "
                          "0 decodes in the training process")
    if cfg.resize is not None and cfg.resize < 1:
        raise AsymbpError(f"resize must be a size >= 1 pixel, got {cfg.resize}; e.g. 32")
    parse_milestones(cfg.lr_milestones, "lr")
    parse_milestones(cfg.wd_milestones, "weight-decay")
    if not (cfg.eps >= 0 and math.isfinite(cfg.eps)):
        raise AsymbpError(f"Adam's eps must be a finite number >= 0, got {cfg.eps}")
    parse_batch_schedule(cfg.batch_schedule)
    parse_feedback_weight_decay(cfg.feedback_weight_decay)
    if cfg.mirror_every < 1 or cfg.mirror_steps < 0 or cfg.mirror_warmup < 0:
        raise AsymbpError(f"weight mirrors need mirror_every >= 1, mirror_steps >= 0 and "
                          f"mirror_warmup >= 0, got {cfg.mirror_every}, {cfg.mirror_steps}, "
                          f"{cfg.mirror_warmup}")
    check_device_name(cfg.device)  # its spelling; whether this machine has it: local_device
    if not cfg.diverge_loss > 0:  # inf is allowed: then only a NaN/inf loss is a divergence
        raise AsymbpError(f"diverge_loss must be > 0 (or inf), got {cfg.diverge_loss}; it is "
                          "the mean per-example training loss above which a run has diverged")
    return spec


def check_choices(cfg: TrainConfig) -> None:
    """Every field with `choices` holds one of them (a field that also takes a bool, such as
    `compile`, may be True or False instead)."""
    for f in FIELDS:
        choices, value = f.metadata["choices"], getattr(cfg, f.name)
        if choices is None or isinstance(value, bool) or value in choices:
            continue
        also = " (or true/false)" if bool in field_types()[f.name] else ""
        raise AsymbpError(f"unknown {f.metadata['label'] or f.name} {value!r}; valid: "
                          f"{', '.join(choices)}{also}")


def _positive(x: float) -> bool:
    return x > 0 and math.isfinite(x)  # NaN fails both


def _short(value) -> str:
    """`repr(value)` on one line and not too long (a tensor's repr spans lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


# What each annotation accepts, in words (the error message) and as a test. No conversion: an
# int field refuses 2.9 and 3.0 alike (3.0 would also give another run key than 3), a float
# field takes an int (a whole number is a number), and bool, although an int in Python, is
# neither an int nor a float here (epochs=True is a mistake, not 1 epoch).
_TYPES = {
    int: ("an int", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("a bool (True/False)", lambda v: isinstance(v, bool)),
    dict: ("a dict", lambda v: isinstance(v, dict)),
    # a pair written as a tuple, or the list JSON makes of it (a stored config)
    tuple: ("a tuple", lambda v: isinstance(v, (tuple, list))),
    type(None): ("None", lambda v: v is None),
}


def check_types(cfg: TrainConfig) -> None:
    """Every field of `cfg` against its annotation (`_TYPES`), before any value is used."""
    for name, allowed in field_types().items():
        value = getattr(cfg, name)
        if not any(_TYPES[t][1](value) for t in allowed):
            expected = " or ".join(_TYPES[t][0] for t in allowed)
            raise AsymbpError(f"config field {name} must be {expected}, got {_short(value)} "
                              f"({type(value).__name__}); give a value of that type (asymbp "
                              "converts no config value)")


# ---- the fields written as text ---------------------------------------------------------------


def parse_batch_schedule(text: str | None) -> list[tuple[int, int]]:
    """"100:3,500" -> [(100, 3), (500, 10**9)]: (batch size, last epoch with it); [] for None."""
    if not text:
        return []
    steps: list[tuple[int, int]] = []
    try:
        total = 0
        parts = [p.strip() for p in text.split(",")]
        for i, part in enumerate(parts):
            if ":" in part:
                b, n = part.split(":")
                total += int(n)
                steps.append((int(b), total))
            elif i == len(parts) - 1:
                steps.append((int(part), 10**9))
            else:
                raise ValueError
        if any(b < 1 for b, _ in steps):
            raise ValueError
    except ValueError:
        raise AsymbpError(f"bad batch schedule {text!r}; expected e.g. '100:3,500' "
                          "(batch 100 for 3 epochs, then 500)") from None
    return steps


def parse_feedback_weight_decay(text: str | None) -> tuple[float, float] | None:
    """"5e-3,1e-4" -> (first epoch, after); None for None (the weights' decay throughout)."""
    if not text:
        return None
    try:
        first, after = (float(v) for v in str(text).split(","))
    except ValueError:
        raise AsymbpError(f"bad feedback weight decay {text!r}; expected 'FIRST,AFTER', e.g. "
                          "'5e-3,1e-4'") from None
    if not all(v >= 0 and math.isfinite(v) for v in (first, after)):
        raise AsymbpError(f"feedback weight decay must be two finite numbers >= 0, got "
                          f"{text!r}; e.g. '5e-3,1e-4'")
    return first, after


def parse_betas(value: str | tuple | list) -> tuple[float, float]:
    """"0.9,0.999" or (0.9, 0.999) -> (β1, β2), each in [0, 1) (the rule of `optim.Adam`)."""
    return adam_betas(value)


def parse_milestones(text: str | None, what: str = "lr") -> list[tuple[int, float]] | None:
    """"100:0.1,150:0.1" -> [(100, 0.1), (150, 0.1)]: after epoch m, multiply by γ; None for
    None (the default schedule)."""
    if text is None:
        return None
    try:
        steps = [(int(m), float(g)) for m, g in (p.split(":") for p in str(text).split(","))]
    except ValueError:
        raise AsymbpError(f"bad {what} milestones {text!r}; expected 'EPOCH:FACTOR,...', e.g. "
                          "'100:0.1,150:0.1' (x0.1 after epochs 100 and 150)") from None
    if not all(m >= 1 and g > 0 and math.isfinite(g) for m, g in steps):
        raise AsymbpError(f"{what} milestones {text!r} need epochs >= 1 and factors > 0; e.g. "
                          "'100:0.1,150:0.1'")
    return steps
