"""The one record type every dataset format is read into, and the report of what a reader had to skip."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "dev", "test")
UNSPLIT = "unsplit"  # images with captions that no official split list names (Flickr8k has 91)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ImageRecord:
    """One image, all its captions and the split it belongs to."""

    image: Path
    captions: tuple[str, ...]
    split: str

    @property
    def image_id(self) -> str:
        """The file name: what caption files and split lists use to name an image."""
        return self.image.name


@dataclass
class LoadReport:
    """What a reader skipped or repaired, counted by reason, so no data disappears silently."""

    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, example: str, count: int = 1) -> None:
        self.skipped[reason] += count
        self._remember(reason, example)

    def repair(self, reason: str, example: str) -> None:
        self.repaired[reason] += 1
        self._remember(reason, example)

    def _remember(self, reason: str, example: str) -> None:
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(example)

    def summary(self) -> str:
        """One line a user can read: what was skipped and repaired, with a few examples of each."""
        parts = [self._describe(reason, count, "skipped") for reason, count in sorted(self.skipped.items())]
        parts += [self._describe(reason, count, "repaired") for reason, count in sorted(self.repaired.items())]
        parts += self.notes
        return "; ".join(parts) if parts else "nothing skipped"

    def _describe(self, reason: str, count: int, verb: str) -> str:
        examples = ", ".join(self.examples.get(reason, []))
        more = ", ..." if count > len(self.examples.get(reason, [])) else ""
        return f"{verb} {count} {reason} ({examples}{more})"


@dataclass
class Dataset:
    """Records of one dataset plus the report of how they were read."""

    name: str
    records: list[ImageRecord]
    report: LoadReport

    def split(self, name: str) -> list[ImageRecord]:
        return [record for record in self.records if record.split == name]

    def split_sizes(self) -> dict[str, int]:
        sizes = Counter(record.split for record in self.records)
        ordered = {name: sizes.get(name, 0) for name in SPLITS}
        ordered.update({name: count for name, count in sorted(sizes.items()) if name not in ordered})
        return ordered

    @property
    def num_captions(self) -> int:
        return sum(len(record.captions) for record in self.records)


def take_subset(
    records: list[ImageRecord],
    max_images: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> list[ImageRecord]:
    """Keep the same share of every split, chosen by `seed`, so a quick run still has train/dev/test."""
    if max_images is None and fraction is None:
        return records
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
    share = fraction if fraction is not None else 1.0
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        share = min(share, max_images / max(len(records), 1))
    kept: set[int] = set()
    by_split: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        by_split.setdefault(record.split, []).append(index)
    for split_name, indices in sorted(by_split.items()):
        chosen = list(indices)
        random.Random(f"{seed}:{split_name}").shuffle(chosen)
        kept.update(chosen[: max(1, round(len(indices) * share))])
    return [record for index, record in enumerate(records) if index in kept]
