from __future__ import annotations

import platform
import sys

import pytest

from captioner.devices import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_the_allocator_settings() -> None:
    """If mallopt() refused them, captioning and training would silently lose a quarter of their speed."""
    assert keep_freed_memory() is True
