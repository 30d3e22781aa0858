"""Where the networks run: ``use_device`` makes one device (``cpu``, ``cuda`` or ``cuda:N``) torch's
default for the process, so models and the tensors their code creates live there; the numpy
arrays the data pipeline makes are moved with ``to_device`` and results come back with
``to_numpy``. On ``cpu`` (the default) both are no-ops.

Runs on a GPU are not bit-identical to CPU runs (other kernels, other summation order) and a
resumed GPU run is not bit-identical to an uninterrupted one (CUDA's random state is not
checkpointed); budgets stay steps, so what a run learns does not depend on the machine's speed.
"""

from __future__ import annotations

import os
import platform
import re

import numpy as np
import torch

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def use_device(name: str, field: str = "device") -> torch.device:
    """Validate ``name`` and make it the default device; ``field`` names the option in errors."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"{field}: expected 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{field}: {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA device")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"{field}: {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(dev.index or 0)
    torch.set_default_device(dev)
    return dev


def to_device(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A numpy array (shared, not copied, on the CPU) or tensor on the default device."""
    t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
    return t.to(torch.get_default_device())


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array, wherever it lives."""
    return t.detach().cpu().numpy()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: on a CPU, AVX512-BF16 or AMX tiles (without
    them oneDNN emulates bf16 with float32 instructions, slower than float32 itself); on CUDA, what
    torch reports (Ampere and newer)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    # Private helpers of torch.cpu (torch >= 2.3); a torch without them is taken to have neither.
    flags = (getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(bool(f()) for f in flags)


AMP_MODES = ("none", "bf16", "auto")


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision a run with ``amp`` trains in on ``device``: "bf16" or "none". "auto" is bf16
    where the device has it in hardware (``native_bf16``), else float32."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp: must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "auto":
        return "bf16" if native_bf16(device) else "none"
    return amp


def machine(device: torch.device | None = None) -> str:
    """One line naming the machine a benchmark ran on: CPU, logical CPUs, torch, and the GPU where
    ``device`` is a CUDA one."""
    text = f"{_cpu_model()}, {os.cpu_count()} logical CPUs, "
    text += f"{'bf16' if native_bf16(torch.device('cpu')) else 'no bf16'} in hardware, torch {torch.__version__}"
    if device is not None and device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def _cpu_model() -> str:
    """The CPU's model name where /proc/cpuinfo gives one (Linux), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
