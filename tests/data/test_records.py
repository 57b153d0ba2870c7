from __future__ import annotations

from pathlib import Path

import pytest

from captioner.data.records import ImageRecord, take_subset


def records() -> list[ImageRecord]:
    splits = ["train"] * 80 + ["dev"] * 10 + ["test"] * 10
    return [ImageRecord(Path(f"{i}.jpg"), ("c",), split) for i, split in enumerate(splits)]


def test_subset_keeps_the_share_of_every_split_and_is_seeded() -> None:
    subset = take_subset(records(), max_images=20, seed=3)
    assert [r.split for r in subset].count("train") == 16
    assert [r.split for r in subset].count("dev") == 2
    assert subset == take_subset(records(), max_images=20, seed=3)
    assert subset != take_subset(records(), max_images=20, seed=4)


def test_subset_fraction_and_validation() -> None:
    assert len(take_subset(records(), fraction=0.5)) == 50
    assert take_subset(records()) == records()
    with pytest.raises(ValueError):
        take_subset(records(), fraction=1.5)
