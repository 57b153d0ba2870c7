"""The one record type every dataset format is read into, and the report of what a reader had to skip."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "dev", "test")
UNSPLIT = "unsplit"  # images with captions that no official split list names (Flickr8k has 91)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# (image key relative to the image root, caption text, "file:line", caption id or None). Two captions of one
# image are duplicates when their ids match or, without ids, when their texts match exactly: two annotators
# who wrote the same sentence (Flickr8k has 14 such pairs, differing in case) are two captions, not one.
Caption = tuple[str, str, str, str | None]


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


def collect_records(
    captions: Iterable[Caption],
    image_root: Path,
    split_of: Callable[[str], str],
    report: LoadReport,
    scan_for_uncaptioned: bool = True,
) -> list[ImageRecord]:
    """Group captions by image, drop blanks/duplicates/missing images (counted), and assign splits."""
    by_image: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    for key, caption, where, caption_id in captions:
        text = " ".join(caption.split())
        if not text:
            report.skip("blank captions", where)
            continue
        identity = caption_id if caption_id is not None else text
        if identity in seen.setdefault(key, set()):
            report.skip("duplicate caption lines", where)
            continue
        seen[key].add(identity)
        by_image.setdefault(key, []).append(text)
    present = _ExistingFiles(image_root, by_image)
    records = []
    for key, texts in by_image.items():
        if key not in present:
            report.skip("caption ids without an image", f"{key} ({len(texts)} captions)")
            continue
        records.append(ImageRecord(image_root / key, tuple(texts), split_of(key)))
    if scan_for_uncaptioned:
        for key in sorted(present.all_images - by_image.keys()):
            report.skip("images without captions", key)
    return records


class _ExistingFiles:
    """Which image keys exist, listing each folder once instead of one stat per image."""

    def __init__(self, root: Path, keys: Iterable[str]) -> None:
        self.all_images: set[str] = set()
        folders = {os.path.dirname(key) for key in keys} or {""}
        for folder in folders:
            try:
                names = os.listdir(root / folder)
            except OSError:
                continue
            self.all_images.update(
                os.path.join(folder, name) if folder else name
                for name in names
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            )

    def __contains__(self, key: object) -> bool:
        return key in self.all_images
