from __future__ import annotations

import platform
import sys

import pytest
import torch

from captioner.devices import keep_freed_memory, pick_device
from captioner.errors import CaptionerError


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_the_allocator_settings() -> None:
    """If mallopt() refused them, captioning and training would silently lose a quarter of their speed."""
    assert keep_freed_memory() is True


@pytest.mark.parametrize("requested", ["tpu", "mps", "gpu", "cuda:x"])
def test_a_device_captioner_does_not_run_on_is_a_clear_error(requested: str) -> None:
    with pytest.raises(CaptionerError, match=f"--device {requested}: captioner runs on cpu, cuda or cuda:N"):
        pick_device(requested)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_a_clear_error() -> None:
    with pytest.raises(CaptionerError, match="--device cuda: this machine has no CUDA GPU"):
        pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu") and pick_device(None) == torch.device("cpu")
