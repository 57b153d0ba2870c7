"""Which device to run on and which reduced precision pays off there."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from functools import lru_cache

import torch

from captioner.errors import CaptionerError


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present, else CPU; `requested` ("cpu", "cuda", "cuda:1") forces one, checked here so that a
    device the machine lacks is one clear sentence before any work, not PyTorch's traceback in the middle."""
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CaptionerError(f"--device {requested}: captioner runs on cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaptionerError(f"--device {requested}: this machine has no CUDA GPU that PyTorch can use "
                             f"(torch {torch.__version__}); use --device cpu, or leave it out")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CaptionerError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered from cuda:0")
    return device


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


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel.

    A training step, an encoder batch or a decoding step allocates and frees tensors of a few MB hundreds of
    times. By default glibc serves those with fresh mmap()s and returns them at once, so every allocation
    pays page faults again; on a 2-core CPU that costs a tenth of the attention decoder's training speed and
    a third of captioning's (the encoder between decoding batches: 17 ms per image instead of 11). Called
    by training, feature extraction, evaluation and the Captioner; once per process; a no-op outside glibc
    (macOS, Windows, musl). The price: the process's resident memory does not shrink after a peak."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # mallopt parameter numbers from <malloc.h>
    return bool(libc.mallopt(mmap_threshold, 32 * 2**20) and libc.mallopt(trim_threshold, 2**30)
                and libc.mallopt(top_pad, 256 * 2**20))
