"""Line readers, one per caption format: Flickr token files, Kaggle / Flickr30k CSV, official split lists,
Karpathy's split JSON and COCO's caption JSON. Each yields (image key, caption, where, caption id) and
survives messy files: what cannot be used is skipped and counted in the LoadReport; a file in the wrong format
altogether raises one DatasetFormatError naming the file, the line and what was expected.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from captioner.data.records import IMAGE_EXTENSIONS, UNSPLIT, Caption, LoadReport
from captioner.data.textfiles import read_lines
from captioner.errors import DatasetFormatError

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "dev", "test": "test"}

# Mislabelled lines tolerated in a file before it is judged to be in the wrong format altogether.
MAX_MALFORMED_SHARE = 0.5


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


def load_json(path: Path) -> object:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        line = getattr(error, "lineno", None)
        raise DatasetFormatError(path, line, "a JSON file", str(error)) from error


def read_karpathy_json(path: Path, report: LoadReport) -> Iterator[tuple[Caption, str]]:
    """Karpathy's dataset_*.json: yields ((image key, caption, where), split)."""
    data = load_json(path)
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


def read_coco_json(path: Path, report: LoadReport) -> Iterator[Caption]:
    """COCO `captions_*.json`: images [{id, file_name}] and annotations [{image_id, caption}]."""
    data = load_json(path)
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
