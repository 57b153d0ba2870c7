"""Which device to run on and which reduced precision pays off there."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present, else CPU; `requested` ("cpu", "cuda", "cuda:1") forces one."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: where bf16 autocast runs CNNs several times faster than fp32."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision to autocast to on `device`, or None where fp32 is the better choice."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
