"""Which float format training computes in: bf16 only where the hardware has it natively."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return flags


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """Turn ``auto`` into ``bf16`` or ``fp32`` for ``device``; explicit choices pass through.

    A CPU without AVX512-BF16/AMX emulates bf16 matmuls 10-100x slower than fp32, so
    ``auto`` picks fp32 there; on CUDA it needs a GPU that supports bf16 (Ampere+).
    """
    if requested in ("fp32", "bf16"):
        return requested  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_flags() & NATIVE_BF16_CPU_FLAGS else "fp32"


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
