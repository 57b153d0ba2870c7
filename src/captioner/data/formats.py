"""Every dataset format (Flickr token files, Kaggle CSV, Karpathy JSON, COCO JSON) -> one list of ImageRecord.

Readers survive messy files: they skip what cannot be used, count it in a LoadReport and go on. A file that
is in the wrong format altogether raises one DatasetFormatError naming the file, the line and what was
expected.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from captioner.data.records import (IMAGE_EXTENSIONS, SPLITS, UNSPLIT, Dataset, ImageRecord, LoadReport,
                                    take_subset)
from captioner.data.textfiles import read_lines
from captioner.errors import CaptionerError, DatasetFormatError

DATASET_TYPES = ("flickr8k", "flickr30k", "coco", "karpathy", "csv", "shapes")

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
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "dev", "test": "test"}
COCO_SPLITS = {"train": "train", "val": "dev", "test": "test"}

# Mislabelled lines tolerated in a file before it is judged to be in the wrong format altogether.
MAX_MALFORMED_SHARE = 0.5

# (image key relative to the image root, caption text, "file:line", caption id or None). Two captions of one
# image are duplicates when their ids match or, without ids, when their texts match exactly: two annotators
# who wrote the same sentence (Flickr8k has 14 such pairs, differing in case) are two captions, not one.
Caption = tuple[str, str, str, str | None]


def load_dataset(
    dataset_type: str,
    data_dir: Path | str | None,
    *,
    captions_file: Path | str | None = None,
    seed: int = 0,
    max_images: int | None = None,
    subset_fraction: float | None = None,
) -> Dataset:
    """Read any supported dataset folder; `captions_file` overrides the caption file found by layout, and
    `max_images` / `subset_fraction` keep the same seeded share of every split for quick runs."""
    dataset = _load_full(dataset_type, data_dir, captions_file, seed)
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
               seed: int) -> Dataset:
    if dataset_type not in DATASET_TYPES:
        raise CaptionerError(f"unknown --dataset_type {dataset_type!r}; choose one of {', '.join(DATASET_TYPES)}")
    if dataset_type == "shapes":
        from captioner.data.shapes import load_shapes

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
        return _load_coco(root, report)
    if dataset_type == "karpathy":
        return load_karpathy(explicit or _find_karpathy_json(root), root, report)
    return _load_flickr_style(dataset_type, root, explicit, report, seed)


# ---------------------------------------------------------------- line readers (one per caption format)


def read_token_file(path: Path, report: LoadReport) -> Iterator[Caption]:
    """Flickr8k/30k token file: `IMAGE.jpg#N<TAB>caption` per line."""
    lines = read_lines(path, report)
    checker = _FormatChecker(path, "IMAGE.jpg#N<TAB>caption", report)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        image, hash_sign, index = key.strip().rpartition("#")
        if not tab or not hash_sign or not image or not index.strip().isdigit():
            checker.malformed(number, line)
            continue
        checker.ok()
        yield image, caption, f"{path.name}:{number}", index.strip()
    checker.finish()


def read_captions_csv(path: Path, report: LoadReport) -> Iterator[Caption]:
    """Kaggle `captions.txt` (`image,caption`) and Flickr30k `results.csv` (`image_name| comment_number| comment`)."""
    lines = read_lines(path, report)
    header_index = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_index is None:
        raise DatasetFormatError(path, 1, "a header line `image,caption`", "an empty file")
    header_line = lines[header_index]
    delimiter = max(",|\t", key=header_line.count)
    header = [name.strip().lower() for name in next(csv.reader([header_line], delimiter=delimiter))]
    image_column = _column(header, ("image", "image_name", "filename", "file_name", "image_id"))
    caption_column = _column(header, ("caption", "comment", "captions", "text"))
    if image_column is None or caption_column is None:
        raise DatasetFormatError(path, header_index + 1, "a header line naming `image` and `caption` columns",
                                 header_line[:80])
    checker = _FormatChecker(path, f"{header_line.strip()!r} rows", report)
    # one row per line, each parsed on its own: a caption never spans lines, and an unclosed quote would
    # otherwise swallow the rest of the file into one caption
    for number, line in enumerate(lines[header_index + 1:], header_index + 2):
        row = next(csv.reader([line], delimiter=delimiter), [])
        if line.count('"') % 2:
            report.repair("lines with an unclosed quote (read to the line's end)", f"{path.name}:{number}")
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(image_column, caption_column) or not row[image_column].strip():
            checker.malformed(number, delimiter.join(row))
            continue
        checker.ok()
        caption = delimiter.join(row[caption_column:]) if caption_column == len(header) - 1 else row[caption_column]
        yield row[image_column].strip(), caption, f"{path.name}:{number}", None
    checker.finish()


def read_split_list(path: Path, report: LoadReport) -> list[str]:
    """An official split list: one image file name per line."""
    names = [line.strip() for line in read_lines(path, report) if line.strip()]
    for number, name in enumerate(names, 1):
        if "\t" in name or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
            raise DatasetFormatError(path, number, "one image file name per line", name[:80])
    return names


class _FormatChecker:
    """Tolerates a few bad lines, but a file whose first line or most lines are bad is the wrong format."""

    def __init__(self, path: Path, expected: str, report: LoadReport) -> None:
        self.path, self.expected, self.report = path, expected, report
        self.good = self.bad = 0

    def ok(self) -> None:
        self.good += 1

    def malformed(self, number: int, line: str) -> None:
        if self.good == 0 and self.bad == 0:
            raise DatasetFormatError(self.path, number, self.expected, line[:80])
        self.bad += 1
        self.report.skip("malformed lines", f"{self.path.name}:{number}")

    def finish(self) -> None:
        if self.bad > MAX_MALFORMED_SHARE * (self.good + self.bad):
            raise DatasetFormatError(self.path, None, self.expected,
                                     f"{self.bad} of {self.good + self.bad} lines malformed")


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    return next((header.index(name) for name in names if name in header), None)


# ---------------------------------------------------------------- from captions to records


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


# ---------------------------------------------------------------- Flickr8k / Flickr30k / CSV folders


def _load_flickr_style(dataset_type: str, root: Path, explicit: Path | None, report: LoadReport,
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
        records = _seeded_split(records, seed, report)
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


def _seeded_split(records: list[ImageRecord], seed: int, report: LoadReport) -> list[ImageRecord]:
    """No official split lists: hold out 1000 (or 10%) images each for dev and test, chosen by seed."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = min(1000, len(records) // 10)
    split_of = {index: "test" for index in order[:held]}
    split_of.update({index: "dev" for index in order[held:2 * held]})
    report.notes.append(f"no official split lists found: made a seeded split with {held} dev and {held} test images")
    return [ImageRecord(r.image, r.captions, split_of.get(i, "train")) for i, r in enumerate(records)]


# ---------------------------------------------------------------- Karpathy split JSON


def _find_karpathy_json(root: Path) -> Path:
    found = sorted(root.glob("dataset_*.json"))
    if not found:
        raise CaptionerError(f"no Karpathy split file (dataset_flickr8k.json, dataset_coco.json, ...) in {root}")
    return found[0]


def _load_json(path: Path) -> object:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        line = getattr(error, "lineno", None)
        raise DatasetFormatError(path, line, "a JSON file", str(error)) from error


def read_karpathy_json(path: Path, report: LoadReport) -> Iterator[tuple[Caption, str]]:
    """Karpathy's dataset_*.json: yields ((image key, caption, where), split)."""
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(path, None, 'a Karpathy split file {"images": [{"filename", "split", "sentences"}]}')
    for index, image in enumerate(data["images"]):
        where = f"{path.name}:images[{index}]"
        if not isinstance(image, dict) or not isinstance(image.get("filename"), str) \
                or not isinstance(image.get("sentences"), list):
            if index == 0:
                raise DatasetFormatError(path, None, "images[] entries with `filename` and `sentences`", str(image)[:80])
            report.skip("malformed entries", where)
            continue
        key = os.path.join(image.get("filepath", ""), image["filename"])
        split = KARPATHY_SPLITS.get(str(image.get("split", "")), UNSPLIT)
        for sentence in image["sentences"]:
            raw = sentence.get("raw") if isinstance(sentence, dict) else sentence
            tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) and isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
                raw = " ".join(tokens)
            if not isinstance(raw, str):
                report.skip("sentences without a `raw` text or `tokens`", where)
                continue
            yield (key, raw, where, None), split


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


# ---------------------------------------------------------------- COCO caption JSON


def read_coco_json(path: Path, report: LoadReport) -> Iterator[Caption]:
    """COCO `captions_*.json`: images [{id, file_name}] and annotations [{image_id, caption}]."""
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list) \
            or not isinstance(data.get("images"), list):
        raise DatasetFormatError(path, None, 'COCO captions {"images": [...], "annotations": [...]}')
    files = {}
    for index, image in enumerate(data["images"]):
        usable = isinstance(image, dict) and isinstance(image.get("id"), (int, str))
        if usable and isinstance(image.get("file_name"), str):
            files[image["id"]] = image["file_name"]
        else:
            report.skip("images[] entries without an `id` and a `file_name`", f"{path.name}:images[{index}]")
    for index, annotation in enumerate(data["annotations"]):
        where = f"{path.name}:annotations[{index}]"
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if not isinstance(image_id, (int, str)) or image_id not in files:
            report.skip("annotations naming an unknown image id", where)
            continue
        if not isinstance(annotation.get("caption"), str):
            report.skip("annotations without a caption text", where)
            continue
        caption_id = annotation.get("id")
        yield files[image_id], annotation["caption"], where, None if caption_id is None else str(caption_id)


def _load_coco(root: Path, report: LoadReport) -> Dataset:
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


__all__ = ["DATASET_TYPES", "SPLITS", "load_dataset", "read_token_file", "read_captions_csv", "read_split_list",
           "read_karpathy_json", "read_coco_json", "collect_records", "find_image_dir"]
