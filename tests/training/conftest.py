"""The training tests' small synthetic dataset (helpers.py has the config that trains on it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.data.shapes import generate_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_images=60, seed=3)
