"""Shared test helpers: tiny images written on the fly, and the real Flickr8k copy when it is there."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

REAL_FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"

needs_real_flickr8k = pytest.mark.skipif(
    not (REAL_FLICKR8K / "Flickr8k.token.txt").is_file(), reason=f"real Flickr8k not found at {REAL_FLICKR8K}"
)


def write_image(path: Path, size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path
