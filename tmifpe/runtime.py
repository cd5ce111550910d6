"""The runtime contract of every evaluation, and the record of the environment that ran it.

Floating-point results depend on process-wide torch state: TF32 on Ampere+ GPUs (torch defaults
cuDNN convolutions to TF32), non-deterministic kernels, the thread count. :func:`numerics` sets
the project's contract for the duration of a call and restores the caller's state afterwards (a
library must not leave global torch state changed):

- fp32 matmuls and cuDNN convolutions/RNNs in IEEE fp32 (``fp32_precision = "ieee"``, torch's
  TF32 API of 2.9+; the legacy ``allow_tf32`` flags are never touched, since torch refuses a
  mix of the two APIs);
- cuDNN deterministic, no benchmark autotuning, ``torch.use_deterministic_algorithms`` (warn
  only: ops without a deterministic kernel warn instead of failing);
- a fixed CPU thread count when given.

:func:`environment` describes the hardware class and library versions results were computed
with; same params + seed + hardware class + versions give byte-identical per-example results,
other CPUs/GPUs may differ in the last bits (README, "Reproducibility").
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import torch

# CPU flags that select float kernels (oneDNN/ATen dispatch) and hence the last bits of results.
FLOAT_ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16",
                   "amx_bf16", "amx_fp16", "asimd", "asimdhp", "sve", "bf16")
_TF32_SWITCHES = ("matmul", "cudnn.conv", "cudnn.rnn")


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda``/``cuda:N`` must exist (ValueError)."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; "
                         "expected cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto") from None


def _tf32_backend(switch: str) -> Any:
    backend: Any = torch.backends.cuda.matmul if switch == "matmul" else torch.backends.cudnn
    for part in switch.split(".")[1:]:
        backend = getattr(backend, part)
    return backend


def fp32_precision_state() -> dict[str, str]:
    """``{"matmul": ..., "cudnn.conv": ..., "cudnn.rnn": ...}``: "ieee" (fp32), "tf32" or
    "none" (inherit: TF32 for cuDNN by torch's default)."""
    return {s: str(_tf32_backend(s).fp32_precision) for s in _TF32_SWITCHES}


@contextmanager
def numerics(threads: int | None = None) -> Iterator[None]:
    """The runtime contract (module docstring) for the duration of the ``with`` block."""
    saved_precision = fp32_precision_state()
    saved = (torch.get_num_threads(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for switch in _TF32_SWITCHES:
            _tf32_backend(switch).fp32_precision = "ieee"
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        n_threads, deterministic, benchmark, algos, warn_only = saved
        torch.set_num_threads(n_threads)
        for switch, value in saved_precision.items():
            _tf32_backend(switch).fp32_precision = value
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = benchmark
        torch.use_deterministic_algorithms(algos, warn_only=warn_only)


@cache
def _cpu() -> tuple[str, tuple[str, ...]]:
    """CPU model name and the float-relevant ISA flags it has (Linux /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and value.strip():
                name = value.strip()
            elif key in ("flags", "features"):
                flags |= set(value.split())
    return name, tuple(f for f in FLOAT_ISA_FLAGS if f in flags)


def hardware_class(device: torch.device) -> str:
    """What decides the last bits of float results: the GPU model, or the CPU's kernel
    capability (ATen's dispatch level) and float ISA flags, e.g. ``cpu/AVX512/amx_bf16+...``."""
    if device.type == "cuda":
        return f"cuda/{torch.cuda.get_device_name(device)}"
    _, flags = _cpu()
    return f"cpu/{torch.backends.cpu.get_cpu_capability()}/{'+'.join(flags) or 'none'}"


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The environment that produced a result (recorded in every output, shown by the report).

    No host name, time or path: equal environments give equal records, so outputs stay
    byte-identical where the results are.
    """
    dev = resolve_device(device)
    cpu_name, flags = _cpu()
    cuda = dev.type == "cuda"
    return {
        "hardware_class": hardware_class(dev),
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if cuda else cpu_name,
        "cpu": cpu_name,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": list(flags),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "fp32_precision": fp32_precision_state(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "threads": torch.get_num_threads(),
    }
