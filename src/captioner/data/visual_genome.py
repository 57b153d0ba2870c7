"""Visual Genome (Krishna et al. 2017): region descriptions as captions of their image.

A Visual Genome folder holds `region_descriptions.json` ([{"id": IMAGE, "regions": [{"phrase", "x", "y",
"width", "height", ...}]}]), `image_data.json` ([{"image_id", "width", "height", "url"}], for the images'
sizes; without it they are read from the image files) and the images in `VG_100K/` and `VG_100K_2/`. Most
regions describe a small part of the scene ("a red sign"); those that cover at least `min_region_area` of the
image (default 0.3) read like captions of the whole image, so only they are kept. The dataset has no official
caption split: a seeded split holds out 1000 (or 10%) images each for dev and test.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from captioner.data.layouts import seeded_split
from captioner.data.readers import load_json
from captioner.data.records import Dataset, LoadReport, collect_records
from captioner.errors import CaptionerError, DatasetFormatError

REGIONS_FILE = "region_descriptions.json"
IMAGES_FILE = "image_data.json"
IMAGE_FOLDERS = ("VG_100K", "VG_100K_2", "images", "VG_100K_images")
DEFAULT_MIN_REGION_AREA = 0.3


def load_visual_genome(root: Path, report: LoadReport, seed: int,
                       min_region_area: float = DEFAULT_MIN_REGION_AREA) -> Dataset:
    regions_path = root / REGIONS_FILE
    if not regions_path.is_file():
        raise CaptionerError(f"no {REGIONS_FILE} in {root}: a Visual Genome folder holds {REGIONS_FILE}, "
                             f"{IMAGES_FILE} and the image folders {', '.join(IMAGE_FOLDERS[:2])}")
    folders = [root / name for name in IMAGE_FOLDERS if (root / name).is_dir()]
    if not folders:
        raise CaptionerError(f"no image folder in {root}: looked for {', '.join(IMAGE_FOLDERS)}")
    where = _image_files(folders)
    sizes = _image_sizes(root / IMAGES_FILE, report)
    captions = []
    for image, regions, place in _regions(regions_path, report):
        key = f"{image}.jpg"
        if key not in where:
            report.skip("images without a file", f"{key} ({len(regions)} regions)")
            continue
        size = sizes.get(image) or _header_size(root / where[key], report)
        if size is None:
            continue
        kept = 0
        for index, region in enumerate(regions):
            phrase = _phrase_if_large(region, size, min_region_area, report, f"{place}.regions[{index}]")
            if phrase is not None:
                captions.append((where[key], phrase, f"{place}.regions[{index}]", None))
                kept += 1
        if not kept:
            report.skip(f"images without a region covering {min_region_area:g} of the image", key)
    records = collect_records(captions, root, lambda key: "train", report, scan_for_uncaptioned=False)
    return Dataset("visual_genome", seeded_split(records, seed, report), report)


def _regions(path: Path, report: LoadReport):
    """(image id, its regions, where) for each well-formed entry of region_descriptions.json."""
    data = load_json(path)
    if not isinstance(data, list):
        raise DatasetFormatError(path, None, 'a list of {"id": IMAGE_ID, "regions": [...]} entries')
    for index, entry in enumerate(data):
        place = f"{path.name}:[{index}]"
        image = entry.get("id", entry.get("image_id")) if isinstance(entry, dict) else None
        regions = entry.get("regions") if isinstance(entry, dict) else None
        if not isinstance(image, (int, str)) or isinstance(image, bool) or not isinstance(regions, list):
            if index == 0:
                raise DatasetFormatError(path, None, 'entries {"id": IMAGE_ID, "regions": [...]}', str(entry)[:80])
            report.skip("malformed entries", place)
            continue
        yield image, regions, place


def _phrase_if_large(region: object, size: tuple[int, int], min_area: float, report: LoadReport,
                     where: str) -> str | None:
    if not isinstance(region, dict) or not isinstance(region.get("phrase"), str):
        report.skip("regions without a phrase", where)
        return None
    try:
        width, height = float(region["width"]), float(region["height"])
    except (KeyError, TypeError, ValueError):
        report.skip("regions without a width and height", where)
        return None
    if width <= 0 or height <= 0:
        report.skip("regions without a width and height", where)
        return None
    if width * height < min_area * size[0] * size[1]:
        return None  # a detail of the scene, not a caption of the image: left out by design, not counted
    return region["phrase"]


def _image_files(folders: list[Path]) -> dict[str, str]:
    """File name -> path relative to the dataset folder, listing each folder once."""
    where = {}
    for folder in folders:
        for name in os.listdir(folder):
            where.setdefault(name, f"{folder.name}/{name}")
    return where


def _image_sizes(path: Path, report: LoadReport) -> dict[int | str, tuple[int, int]]:
    """Image id -> (width, height) from image_data.json; {} without the file (the image headers are read)."""
    if not path.is_file():
        report.notes.append(f"no {IMAGES_FILE}: image sizes read from the image files")
        return {}
    data = load_json(path)
    if not isinstance(data, list):
        raise DatasetFormatError(path, None, 'a list of {"image_id", "width", "height"} entries')
    sizes = {}
    for index, entry in enumerate(data):
        image = entry.get("image_id", entry.get("id")) if isinstance(entry, dict) else None
        try:
            size = (int(entry["width"]), int(entry["height"]))
        except (KeyError, TypeError, ValueError):
            size = None
        if image is None or size is None or min(size) <= 0:
            report.skip(f"{IMAGES_FILE} entries without an id and a size", f"{path.name}:[{index}]")
            continue
        sizes[image] = size
    return sizes


def _header_size(path: Path, report: LoadReport) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as error:
        report.skip("images that cannot be read", f"{path.name} ({type(error).__name__})")
        return None
