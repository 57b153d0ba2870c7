from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.data.formats import load_dataset
from captioner.data.shapes import COLORS, Shape, describe, draw, generate_shapes, relation


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_shapes(tmp_path / "a", num_images=20, seed=7)
    second = generate_shapes(tmp_path / "b", num_images=20, seed=7)
    assert (first / "dataset_shapes.json").read_text() == (second / "dataset_shapes.json").read_text()
    assert (first / "Images" / "shapes_00003.png").read_bytes() == (second / "Images" / "shapes_00003.png").read_bytes()
    other = generate_shapes(tmp_path / "c", num_images=20, seed=8)
    assert (other / "dataset_shapes.json").read_text() != (first / "dataset_shapes.json").read_text()


def test_load_generates_once_with_splits_and_five_captions(tmp_path: Path) -> None:
    dataset = load_dataset("shapes", tmp_path / "shapes")
    assert len(dataset.records) == 3000
    assert dataset.split_sizes() == {"train": 2400, "dev": 300, "test": 300}
    assert all(len(record.captions) == 5 for record in dataset.records)
    stamp = (tmp_path / "shapes" / "dataset_shapes.json").stat().st_mtime_ns
    load_dataset("shapes", tmp_path / "shapes")
    assert (tmp_path / "shapes" / "dataset_shapes.json").stat().st_mtime_ns == stamp


def test_captions_state_what_is_drawn(tmp_path: Path) -> None:
    """Every colour a caption names is in the picture, and every colour in the picture is named by some caption."""
    folder = generate_shapes(tmp_path / "s", num_images=40, seed=1)
    entries = json.loads((folder / "dataset_shapes.json").read_text())["images"]
    for entry in entries:
        pixels = np.asarray(Image.open(folder / "Images" / entry["filename"]).convert("RGB")).reshape(-1, 3)
        drawn = {name for name, rgb in COLORS.items() if (np.abs(pixels - rgb).sum(1) == 0).sum() > 20}
        text = " ".join(sentence["raw"] for sentence in entry["sentences"]).split()
        named = {word for word in text if word in COLORS}
        assert named == drawn, entry


def test_relations_follow_positions() -> None:
    top = Shape("circle", "red", "small", 0, 1)
    bottom = Shape("square", "blue", "large", 2, 1)
    left = Shape("triangle", "green", "small", 1, 0)
    assert relation(top, bottom) == ("above", "below")
    assert relation(left, Shape("circle", "red", "small", 1, 2)) == ("to the left of", "to the right of")
    captions = describe([top, bottom], random.Random(0))
    assert len(set(captions)) == 5
    image = np.asarray(draw([top, bottom], random.Random(0)))
    red_rows = np.where((np.abs(image - COLORS["red"]).sum(2) == 0).any(1))[0]
    blue_rows = np.where((np.abs(image - COLORS["blue"]).sum(2) == 0).any(1))[0]
    assert red_rows.mean() < blue_rows.mean()


def test_the_drawn_folder_has_a_plain_folders_permissions(tmp_path: Path) -> None:
    import os
    import stat

    previous = os.umask(0o022)
    try:
        folder = generate_shapes(tmp_path / "shapes", num_images=10)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # not mkdtemp's 0700
