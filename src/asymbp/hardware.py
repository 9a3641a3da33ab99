"""What this machine offers a run: the torch devices it has, and whether its CPU does bf16.

A run's `device` is `auto` (CUDA when torch sees a GPU, else the CPU), `cpu`, `cuda`, `cuda:N`
or `mps`. `auto` never picks MPS: asymbp's layer oracle tests have not been run on it, so MPS is
used only when asked for by name. `check_device_name` checks the spelling (anywhere, e.g. while
planning a sweep for a cluster); `check_device` checks that this machine has the device.
"""

from __future__ import annotations

import sys

from .errors import AsymbpError

DEVICE_TYPES = ("cpu", "cuda", "mps")


def _counts() -> tuple[int, bool]:
    """(GPUs torch sees, whether MPS is available) on this machine."""
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None)
    return n_gpus, bool(mps is not None and mps.is_available())


def resolve_device(device: str, n_gpus: int | None = None) -> str:
    """The device `device` means here: `auto` is `cuda` when there is a GPU, else `cpu`; any
    other device is kept. `n_gpus` (default: what torch sees) is for a caller that knows."""
    if str(device) != "auto":
        return str(device)
    if n_gpus is None:
        n_gpus = _counts()[0]
    return "cuda" if n_gpus > 0 else "cpu"


def valid_devices(n_gpus: int, has_mps: bool) -> list[str]:
    """The device names that work on a machine with `n_gpus` GPUs (and MPS or not)."""
    out = ["auto", "cpu"]
    if n_gpus:
        out += ["cuda", "cuda:0" if n_gpus == 1 else f"cuda:0..cuda:{n_gpus - 1}"]
    if has_mps:
        out.append("mps")
    return out


def _parse(device: str):
    """(type, index) of a device name, or an AsymbpError naming the valid spellings."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        d = None
    if d is None or d.type not in DEVICE_TYPES:
        raise AsymbpError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N, mps "
                          "(auto: a GPU when this machine has one, else the CPU)")
    return d.type, d.index


def check_device_name(device: str) -> None:
    """Raise the one-line error for a device name that is no device at all (`nonsense`)."""
    if str(device) != "auto":
        _parse(str(device))


def device_problem(device: str, n_gpus: int, has_mps: bool) -> str | None:
    """Why `device` cannot run on a machine with `n_gpus` GPUs (and MPS or not), or None."""
    device = str(device)
    if device == "auto":
        return None
    kind, index = _parse(device)
    here = f"valid here: {', '.join(valid_devices(n_gpus, has_mps))}"
    if kind == "cuda":
        if n_gpus == 0:
            return (f"device {device!r} was asked for but torch.cuda.is_available() is False on "
                    f"this machine; {here}; give --device auto or cpu, or run on a machine with "
                    "a GPU and a CUDA build of torch")
        if index is not None and index >= n_gpus:
            gpus = "1 GPU" if n_gpus == 1 else f"{n_gpus} GPUs"
            return (f"device {device!r} was asked for but this machine has only {gpus}; {here}; "
                    "give one of them (a bare 'cuda' in a sweep spreads the workers over all)")
    if kind == "mps" and not has_mps:
        return (f"device {device!r} was asked for but torch.backends.mps.is_available() is "
                f"False on this machine (MPS is the GPU of Apple-silicon Macs); {here}")
    if kind == "mps" and (index or 0) > 0:
        return f"device {device!r} was asked for but there is one MPS device, 'mps'; {here}"
    return None


def check_device(device: str) -> None:
    """Raise the one-line error if this machine has no `device` (before any data is loaded)."""
    problem = device_problem(device, *_counts())
    if problem:
        raise AsymbpError(problem)


# ---- bf16 on the CPU -------------------------------------------------------------------------

# x86's AVX-512 BF16 and AMX; Arm's "bf16" (Armv8.6 BFloat16 instructions)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU computes bf16 natively (AVX-512 BF16, AMX or Arm's BF16), from the
    flags in /proc/cpuinfo.

    Arguments:
        cpuinfo: the text of /proc/cpuinfo (default: read it; Linux only).

    Returns:
        True or False, or None where it cannot be told (not Linux, no readable flags).
    """
    if cpuinfo is None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):  # x86, ARM
            flags.update(value.split())
    if not flags:
        return None
    return any(f in flags for f in BF16_FLAGS)


BF16_NOTE = ("asymbp: note: this CPU has no native bf16 (no AVX-512 BF16 / AMX); --amp bf16 "
             "emulates it and is usually slower than fp32 here")


def bf16_note(amp: str, device: str, cpuinfo: str | None = None) -> str | None:
    """The note to print when a bf16 run goes to a CPU without native bf16, else None."""
    if amp != "bf16" or not resolve_device(device).startswith("cpu"):
        return None
    return BF16_NOTE if cpu_has_native_bf16(cpuinfo) is False else None
