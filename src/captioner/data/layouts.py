"""Dataset folders as they are laid out in the wild: where the caption file, the images and the split lists
are for Flickr8k/30k and CSV folders, Karpathy splits and COCO; and a seeded split where there is none."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

from captioner.data.readers import (read_captions_csv, read_coco_json, read_karpathy_json, read_split_list,
                                    read_token_file)
from captioner.data.records import IMAGE_EXTENSIONS, UNSPLIT, Dataset, ImageRecord, LoadReport, collect_records
from captioner.errors import CaptionerError

IMAGE_DIR_NAMES = (
    "Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k_images/flickr30k_images",
    "flickr30k_images", "flickr30k-images", "Flickr30k_images",
)
TOKEN_FILE_NAMES = {
    "flickr8k": ("Flickr8k.token.txt", "Flickr8k_text/Flickr8k.token.txt"),
    "flickr30k": ("results_20130124.token", "flickr30k/results_20130124.token", "results.token",
                  "Flickr30k.token.txt"),
}
CSV_FILE_NAMES = ("captions.txt", "captions.csv", "results.csv", "flickr30k_images/results.csv")
COCO_SPLITS = {"train": "train", "val": "dev", "test": "test"}


def load_flickr_style(dataset_type: str, root: Path, explicit: Path | None, report: LoadReport,
                       seed: int) -> Dataset:
    caption_file = explicit or _find_caption_file(dataset_type, root)
    if caption_file.suffix == ".json":
        return load_karpathy(caption_file, root, report, name=dataset_type)
    image_root = find_image_dir(root)
    is_token = caption_file.suffix in (".token",) or caption_file.name.endswith(".token.txt")
    captions = list(read_token_file(caption_file, report) if is_token else read_captions_csv(caption_file, report))
    split_lists = _find_split_lists(root, report)
    split_of = _split_lookup(split_lists)
    records = collect_records(captions, image_root, split_of, report)
    if split_lists:
        named = set().union(*split_lists.values())
        listed_without_image = named - {record.image_id for record in records}
        for name in sorted(listed_without_image):
            report.skip("split-list names with no captioned image", name)
    else:
        records = seeded_split(records, seed, report)
    return Dataset(dataset_type, records, report)


def _find_caption_file(dataset_type: str, root: Path) -> Path:
    candidates = list(TOKEN_FILE_NAMES.get(dataset_type, ()))
    candidates += list(CSV_FILE_NAMES)
    candidates += [f"dataset_{dataset_type}.json"] if dataset_type != "csv" else []
    for name in candidates:
        if (root / name).is_file():
            return root / name
    if dataset_type == "csv":
        found = sorted(root.glob("*.csv"))
        if found:
            return found[0]
    raise CaptionerError(
        f"no caption file for {dataset_type} in {root}: looked for {', '.join(candidates)}. "
        "Pass --captions_file to name it, or `captioner data download` to fetch the dataset."
    )


def find_image_dir(root: Path) -> Path:
    """The folder of images inside a dataset folder, whichever of the common layouts it uses."""
    for name in IMAGE_DIR_NAMES:
        folder = root / name
        if folder.is_dir() and _has_image(folder):
            return folder
    if _has_image(root):
        return root
    raise CaptionerError(f"no image folder in {root}: looked for {', '.join(IMAGE_DIR_NAMES)} and the folder itself")


def _has_image(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS for entry in entries)


def _find_split_lists(root: Path, report: LoadReport) -> dict[str, set[str]]:
    lists = {}
    for split, stem in (("train", "train"), ("dev", "dev"), ("test", "test")):
        for folder in (root, root / "Flickr8k_text", root / "splits"):
            matches = sorted(folder.glob(f"Flickr_*k.{stem}Images.txt")) if folder.is_dir() else []
            if matches:
                lists[split] = set(read_split_list(matches[0], report))
                break
    return lists


def _split_lookup(split_lists: dict[str, set[str]]) -> Callable[[str], str]:
    owner = {name: split for split, names in split_lists.items() for name in names}
    return lambda key: owner.get(os.path.basename(key), UNSPLIT)


def seeded_split(records: list[ImageRecord], seed: int, report: LoadReport) -> list[ImageRecord]:
    """No official split lists: hold out 1000 (or 10%) images each for dev and test, chosen by seed."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = min(1000, len(records) // 10)
    split_of = {index: "test" for index in order[:held]}
    split_of.update({index: "dev" for index in order[held:2 * held]})
    report.notes.append(f"no official split lists found: made a seeded split with {held} dev and {held} test images")
    return [ImageRecord(r.image, r.captions, split_of.get(i, "train")) for i, r in enumerate(records)]


def find_karpathy_json(root: Path) -> Path:
    found = sorted(root.glob("dataset_*.json"))
    if not found:
        raise CaptionerError(f"no Karpathy split file (dataset_flickr8k.json, dataset_coco.json, ...) in {root}")
    return found[0]


def load_karpathy(path: Path, root: Path, report: LoadReport, name: str | None = None) -> Dataset:
    entries = list(read_karpathy_json(path, report))
    split_by_key = {caption[0]: split for caption, split in entries}
    image_root = _karpathy_image_root(root, next(iter(split_by_key), ""))
    records = collect_records((caption for caption, _ in entries), image_root, split_by_key.__getitem__, report,
                              scan_for_uncaptioned=False)
    dataset_name = name or path.stem.removeprefix("dataset_")
    return Dataset(dataset_name, records, report)


def _karpathy_image_root(root: Path, first_key: str) -> Path:
    for candidate in (root, *(root / name for name in IMAGE_DIR_NAMES)):
        if (candidate / first_key).is_file():
            return candidate
    return find_image_dir(root) if not os.path.dirname(first_key) else root


def load_coco(root: Path, report: LoadReport) -> Dataset:
    annotation_files = sorted((root / "annotations").glob("captions_*.json")) or sorted(root.glob("captions_*.json"))
    if not annotation_files:
        raise CaptionerError(f"no COCO caption files (annotations/captions_train2014.json, ...) in {root}")
    records: list[ImageRecord] = []
    for path in annotation_files:
        part = path.stem.removeprefix("captions_")  # e.g. train2014
        split = next((split for prefix, split in COCO_SPLITS.items() if part.startswith(prefix)), UNSPLIT)
        image_root = next((folder for folder in (root / part, root / "images" / part) if folder.is_dir()), None)
        if image_root is None:
            raise CaptionerError(f"{path} names images of {part}, but there is no {root / part} folder")
        records += collect_records(read_coco_json(path, report), image_root, lambda key, s=split: s, report)
    return Dataset("coco", records, report)


