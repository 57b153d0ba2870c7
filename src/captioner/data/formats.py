"""Every dataset type (Flickr8k/30k, CSV, Karpathy, COCO, the synthetic shapes) -> one list of ImageRecord:
`load_dataset` finds the folder and hands it to the reader of its layout (layouts.py, readers.py)."""

from __future__ import annotations

import os
from pathlib import Path

from captioner.data.layouts import find_karpathy_json, load_coco, load_flickr_style, load_karpathy
from captioner.data.records import Dataset, LoadReport, take_subset
from captioner.data.shapes import load_shapes
from captioner.data.visual_genome import DEFAULT_MIN_REGION_AREA, load_visual_genome
from captioner.errors import CaptionerError

DATASET_TYPES = ("flickr8k", "flickr30k", "coco", "karpathy", "csv", "visual_genome", "shapes")


def load_dataset(
    dataset_type: str,
    data_dir: Path | str | None,
    *,
    captions_file: Path | str | None = None,
    seed: int = 0,
    max_images: int | None = None,
    subset_fraction: float | None = None,
    min_region_area: float = DEFAULT_MIN_REGION_AREA,
) -> Dataset:
    """Read any supported dataset folder; `captions_file` overrides the caption file found by layout, and
    `max_images` / `subset_fraction` keep the same seeded share of every split for quick runs.
    `min_region_area`: Visual Genome regions covering less of their image are not captions of it."""
    dataset = _load_full(dataset_type, data_dir, captions_file, seed, min_region_area)
    if max_images is None and subset_fraction is None:
        return dataset
    try:
        records = take_subset(dataset.records, max_images, subset_fraction, seed)
    except ValueError as error:
        raise CaptionerError(str(error)) from error
    return Dataset(dataset.name, records, dataset.report)


def default_data_dir(dataset_type: str) -> Path:
    """Where a dataset is looked for (and downloaded to) without --data_dir: $CAPTIONER_DATA/<type>, else
    data/<type> under the current folder, as the usual tutorials lay it out."""
    return Path(os.environ.get("CAPTIONER_DATA", "data")).expanduser() / dataset_type


def _load_full(dataset_type: str, data_dir: Path | str | None, captions_file: Path | str | None,
               seed: int, min_region_area: float) -> Dataset:
    if dataset_type not in DATASET_TYPES:
        raise CaptionerError(f"unknown --dataset_type {dataset_type!r}; choose one of {', '.join(DATASET_TYPES)}")
    if dataset_type == "shapes":
        return load_shapes(data_dir, seed=seed)
    if data_dir is None:
        root = default_data_dir(dataset_type)
        if not root.is_dir():
            raise CaptionerError(f"no --data_dir given and the default {root} is not a folder; pass --data_dir, set "
                                 f"$CAPTIONER_DATA, or run `captioner data download {dataset_type}`")
    else:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise CaptionerError(f"--data_dir {root} is not a folder; point it at the {dataset_type} dataset")
    explicit = Path(captions_file).expanduser() if captions_file else None
    if explicit is not None and not explicit.is_file():
        raise CaptionerError(f"--captions_file {explicit} does not exist")
    report = LoadReport()
    if dataset_type == "coco":
        return load_coco(root, report)
    if dataset_type == "visual_genome":
        return load_visual_genome(root, report, seed, min_region_area)
    if dataset_type == "karpathy":
        return load_karpathy(explicit or find_karpathy_json(root), root, report)
    return load_flickr_style(dataset_type, root, explicit, report, seed)
