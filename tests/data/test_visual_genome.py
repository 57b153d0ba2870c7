"""Visual Genome's files in their real format (region_descriptions.json, image_data.json, VG_100K/, VG_100K_2/),
written small: regions large enough become captions, the rest are left out, bad entries are counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.cli.command import main
from captioner.data.formats import load_dataset
from captioner.errors import CaptionerError, DatasetFormatError
from tests.conftest import write_image


def region(image: int, number: int, phrase: object, width: float, height: float) -> dict:
    return {"region_id": image * 100 + number, "image_id": image, "phrase": phrase, "x": 0, "y": 0,
            "width": width, "height": height}


def visual_genome(folder: Path, with_sizes: bool = True) -> Path:
    """Images 1-24 (200x100 pixels) in VG_100K and VG_100K_2; image 25 named but missing; image 26 with only
    small regions."""
    entries = []
    for image in range(1, 27):
        if image != 25:
            write_image(folder / ("VG_100K" if image % 2 else "VG_100K_2") / f"{image}.jpg", (200, 100))
        regions = [region(image, 1, "a man riding a horse on a beach", 200, 100),  # the whole image: kept
                   region(image, 2, "a brown horse walking in the sand", 150, 60),  # 45% of it: kept
                   region(image, 3, "a red hat", 20, 20)]  # 2%: a detail, not a caption
        if image == 26:
            regions = [region(image, 1, "a small dog", 30, 30)]
        if image == 3:
            regions += [region(image, 4, "a man riding a horse on a beach", 200, 100),  # the same phrase again
                        region(image, 5, None, 200, 100), region(image, 6, "no size", None, 10)]
        entries.append({"id": image, "regions": regions})
    entries.append("not an entry")
    (folder / "region_descriptions.json").write_text(json.dumps(entries))
    if with_sizes:
        sizes = [{"image_id": image, "width": 200, "height": 100, "url": f"https://example.org/VG_100K/{image}.jpg"}
                 for image in range(1, 27)]
        (folder / "image_data.json").write_text(json.dumps(sizes))
    return folder


def test_large_regions_become_captions_and_bad_entries_are_counted(tmp_path: Path) -> None:
    dataset = load_dataset("visual_genome", visual_genome(tmp_path / "vg"), seed=1)
    assert dataset.name == "visual_genome" and len(dataset.records) == 24  # 25 has no file, 26 no large region
    by_name = {record.image_id: record for record in dataset.records}
    assert by_name["1.jpg"].captions == ("a man riding a horse on a beach", "a brown horse walking in the sand")
    assert by_name["2.jpg"].image.parent.name == "VG_100K_2" and by_name["2.jpg"].image.is_file()
    assert dataset.split_sizes() == {"train": 20, "dev": 2, "test": 2}  # a seeded split: 10% each
    skipped = dataset.report.skipped
    assert skipped["images without a file"] == 1 and skipped["duplicate caption lines"] == 1
    assert skipped["regions without a phrase"] == 1 and skipped["regions without a width and height"] == 1
    assert skipped["images without a region covering 0.3 of the image"] == 1 and skipped["malformed entries"] == 1
    loose = load_dataset("visual_genome", tmp_path / "vg", seed=1, min_region_area=0.01)
    assert "a red hat" in {c for record in loose.records for c in record.captions}


def test_without_image_data_the_sizes_come_from_the_images(tmp_path: Path) -> None:
    with_sizes = load_dataset("visual_genome", visual_genome(tmp_path / "a"), seed=1)
    without = load_dataset("visual_genome", visual_genome(tmp_path / "b", with_sizes=False), seed=1)
    assert [r.captions for r in without.records] == [r.captions for r in with_sizes.records]
    assert "image sizes read from the image files" in without.report.summary()


def test_wrong_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="no region_descriptions.json"):
        load_dataset("visual_genome", tmp_path)
    folder = visual_genome(tmp_path / "vg")
    (folder / "region_descriptions.json").write_text('{"images": []}')
    with pytest.raises(DatasetFormatError, match="region_descriptions.json"):
        load_dataset("visual_genome", folder)


def test_data_stats_reads_it(tmp_path: Path, capsys) -> None:
    folder = visual_genome(tmp_path / "vg")
    assert main(["data", "stats", "--dataset_type", "visual_genome", "--data_dir", str(folder), "--json",
                 "--min_region_area", "0.4"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["dataset"] == "visual_genome" and stats["images"] == 24 and stats["captions"] == 48
    assert main(["data", "stats", "--dataset_type", "visual_genome", "--data_dir", str(folder),
                 "--min_region_area", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "images       24" in out and "captions     24" in out  # the 45% regions are left out now
    with pytest.raises(SystemExit) as refused:
        main(["data", "stats", "--dataset_type", "visual_genome", "--data_dir", str(folder), "--min_region_area", "2"])
    assert refused.value.code == 2
    assert "--min_region_area/--min-region-area: must be at least 0 and at most 1, not 2" in capsys.readouterr().err
