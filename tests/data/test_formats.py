from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.data.formats import load_dataset
from captioner.errors import CaptionerError, DatasetFormatError
from tests.conftest import write_image


def flickr_folder(root: Path, token_bytes: bytes, images: list[str], splits: dict[str, list[str]]) -> Path:
    for name in images:
        write_image(root / "Images" / name)
    (root / "Flickr8k.token.txt").write_bytes(token_bytes)
    for split, names in splits.items():
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    return root


def test_flickr_token_file_with_every_quirk(tmp_path: Path) -> None:
    token = (
        "\ufeffa.jpg#0\tA dog runs .\r\n"             # BOM + CRLF
        "a.jpg#1\tA dog, running!\r\n"
        "a.jpg#1\tA dog, running!\r\n"                # duplicate line
        "b.jpg#0\t   \r\n"                            # blank caption
        "b.jpg#1\tTwo cats .\r\n"
        "ghost.jpg.1#0\tNo such image .\r\n"           # caption id without an image
        "\r\n"
    ).encode("utf-8") + "c.jpg#0\tA café sign .\n".encode("cp1252")  # not UTF-8
    root = flickr_folder(tmp_path, token, ["a.jpg", "b.jpg", "c.jpg", "lonely.jpg"],
                         {"train": ["a.jpg", "c.jpg"], "dev": ["b.jpg"], "test": ["missing.jpg"]})
    dataset = load_dataset("flickr8k", root)

    by_name = {record.image_id: record for record in dataset.records}
    assert set(by_name) == {"a.jpg", "b.jpg", "c.jpg"}
    assert by_name["a.jpg"].captions == ("A dog runs .", "A dog, running!")
    assert by_name["b.jpg"].captions == ("Two cats .",)
    assert by_name["c.jpg"].captions == ("A café sign .",)
    assert by_name["a.jpg"].split == "train" and by_name["b.jpg"].split == "dev"
    assert by_name["a.jpg"].image == root / "Images" / "a.jpg"
    report = dataset.report
    assert report.skipped == {"duplicate caption lines": 1, "blank captions": 1, "caption ids without an image": 1,
                              "images without captions": 1, "split-list names with no captioned image": 1}
    assert report.repaired == {"lines not valid UTF-8, read as Windows-1252": 1}
    assert "ghost.jpg.1" in report.summary() and "lonely.jpg" in report.summary()


def test_same_text_from_two_annotators_is_kept(tmp_path: Path) -> None:
    token = b"a.jpg#0\tA dog .\na.jpg#1\tA dog .\n"
    dataset = load_dataset("flickr8k", flickr_folder(tmp_path, token, ["a.jpg"], {}))
    assert dataset.records[0].captions == ("A dog .", "A dog .")


def test_wrong_format_names_file_and_line(tmp_path: Path) -> None:
    root = flickr_folder(tmp_path, b"\n\nthis is not a token line\n", ["a.jpg"], {})
    with pytest.raises(DatasetFormatError, match=r"Flickr8k.token.txt, line 3: expected IMAGE.jpg#N<TAB>caption"):
        load_dataset("flickr8k", root)


def test_a_few_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    token = b"a.jpg#0\tA dog .\ngarbage\na.jpg#1\tA cat .\na.jpg#2\tA bird .\n"
    dataset = load_dataset("flickr8k", flickr_folder(tmp_path, token, ["a.jpg"], {}))
    assert dataset.num_captions == 3
    assert dataset.report.skipped["malformed lines"] == 1


def test_mostly_malformed_file_is_an_error(tmp_path: Path) -> None:
    token = b"a.jpg#0\tA dog .\n" + b"garbage\n" * 5
    with pytest.raises(DatasetFormatError, match="5 of 6 lines malformed"):
        load_dataset("flickr8k", flickr_folder(tmp_path, token, ["a.jpg"], {}))


def test_no_split_lists_gives_a_seeded_split(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(30)]
    token = "".join(f"{name}#0\tcaption {name}\n" for name in names).encode()
    root = flickr_folder(tmp_path, token, names, {})
    first = load_dataset("flickr8k", root, seed=1)
    again = load_dataset("flickr8k", root, seed=1)
    assert [r.split for r in first.records] == [r.split for r in again.records]
    assert first.split_sizes()["dev"] == 3 and first.split_sizes()["test"] == 3
    assert "seeded split" in first.report.summary()


def test_kaggle_csv_with_commas_and_quotes(tmp_path: Path) -> None:
    for name in ("x.jpg", "y.jpg"):
        write_image(tmp_path / "Images" / name)
    (tmp_path / "captions.txt").write_text(
        'image,caption\nx.jpg,"A man, a plan, a canal"\nx.jpg,"He said ""hi"" ."\ny.jpg,A girl in a red coat\n'
    )
    dataset = load_dataset("csv", tmp_path)
    by_name = {record.image_id: record.captions for record in dataset.records}
    assert by_name == {"x.jpg": ("A man, a plan, a canal", 'He said "hi" .'), "y.jpg": ("A girl in a red coat",)}


def test_an_unclosed_quote_spoils_one_caption_not_the_rest_of_the_file(tmp_path: Path) -> None:
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        write_image(tmp_path / "Images" / name)
    (tmp_path / "captions.txt").write_text('image,caption\nx.jpg,"A dog, running\ny.jpg,A cat .\nz.jpg,"A bird ."\n')
    dataset = load_dataset("csv", tmp_path)
    by_name = {record.image_id: record.captions for record in dataset.records}
    assert by_name == {"x.jpg": ("A dog, running",), "y.jpg": ("A cat .",), "z.jpg": ("A bird .",)}
    assert dataset.report.repaired["lines with an unclosed quote (read to the line's end)"] == 1
    assert "captions.txt:2" in dataset.report.summary()


def test_flickr30k_pipe_csv(tmp_path: Path) -> None:
    write_image(tmp_path / "flickr30k_images" / "1.jpg")
    (tmp_path / "results.csv").write_text("image_name| comment_number| comment\n1.jpg| 0| Two dogs play .\n")
    dataset = load_dataset("flickr30k", tmp_path)
    assert dataset.records[0].captions == ("Two dogs play .",)


def test_csv_without_header_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "Images" / "x.jpg")
    (tmp_path / "captions.txt").write_text("x.jpg,a dog\n")
    with pytest.raises(DatasetFormatError, match="captions.txt, line 1: expected a header"):
        load_dataset("csv", tmp_path)


def test_karpathy_json(tmp_path: Path) -> None:
    for name in ("p.jpg", "q.jpg", "r.jpg"):
        write_image(tmp_path / "Images" / name)
    images = [{"filename": "p.jpg", "split": "train", "sentences": [{"raw": "A p ."}, {"raw": "Another p ."}]},
              {"filename": "q.jpg", "split": "restval", "sentences": [{"raw": "A q ."}]},
              {"filename": "r.jpg", "split": "val", "sentences": [{"tokens": ["a", "r"]}]}]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    dataset = load_dataset("karpathy", tmp_path)
    assert [(r.image_id, r.split) for r in dataset.records] == [("p.jpg", "train"), ("q.jpg", "train"),
                                                                 ("r.jpg", "dev")]
    assert dataset.records[2].captions == ("a r",)


def test_coco_json(tmp_path: Path) -> None:
    write_image(tmp_path / "train2014" / "COCO_train2014_1.jpg")
    write_image(tmp_path / "val2014" / "COCO_val2014_2.jpg")
    (tmp_path / "annotations").mkdir()
    for part, image_id, name in (("train2014", 1, "COCO_train2014_1.jpg"), ("val2014", 2, "COCO_val2014_2.jpg")):
        data = {"images": [{"id": image_id, "file_name": name}],
                "annotations": [{"id": 10 * image_id, "image_id": image_id, "caption": "A thing ."},
                                {"id": 10 * image_id + 1, "image_id": 999, "caption": "Orphan ."}]}
        (tmp_path / "annotations" / f"captions_{part}.json").write_text(json.dumps(data))
    dataset = load_dataset("coco", tmp_path)
    assert {r.image_id: r.split for r in dataset.records} == {"COCO_train2014_1.jpg": "train",
                                                             "COCO_val2014_2.jpg": "dev"}
    assert dataset.report.skipped["annotations naming an unknown image id"] == 2


def test_karpathy_entries_of_the_wrong_shape_are_skipped_or_named(tmp_path: Path) -> None:
    for name in ("p.jpg", "q.jpg", "r.jpg"):
        write_image(tmp_path / "Images" / name)
    images = [{"filename": "p.jpg", "split": "train", "sentences": [{"raw": "A p ."}, {"raw": None}, 7]},
              {"filename": "q.jpg", "split": "train", "sentences": None},
              {"filename": "r.jpg", "split": "train", "sentences": "a string, not a list"}]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": images}))
    dataset = load_dataset("karpathy", tmp_path)
    assert [(r.image_id, r.captions) for r in dataset.records] == [("p.jpg", ("A p .",))]
    assert dataset.report.skipped["sentences without a `raw` text or `tokens`"] == 2
    assert dataset.report.skipped["malformed entries"] == 2
    images[0]["sentences"] = None  # the first entry decides whether this is a Karpathy file at all
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": images}))
    with pytest.raises(DatasetFormatError, match="expected images\\[\\] entries with `filename` and `sentences`"):
        load_dataset("karpathy", tmp_path)


def test_coco_entries_of_the_wrong_shape_are_skipped(tmp_path: Path) -> None:
    write_image(tmp_path / "train2014" / "COCO_train2014_1.jpg")
    (tmp_path / "annotations").mkdir()
    data = {"images": [{"id": 1, "file_name": "COCO_train2014_1.jpg"}, 2, {"id": [3], "file_name": "x.jpg"}],
            "annotations": [{"image_id": 1, "caption": "A thing ."}, {"image_id": [1], "caption": "Listed id ."},
                            {"image_id": 1, "caption": None}, "not an annotation"]}
    (tmp_path / "annotations" / "captions_train2014.json").write_text(json.dumps(data))
    dataset = load_dataset("coco", tmp_path)
    assert [r.captions for r in dataset.records] == [("A thing .",)]
    skipped = dataset.report.skipped
    assert skipped["images[] entries without an `id` and a `file_name`"] == 2
    assert skipped["annotations naming an unknown image id"] == 2 and skipped["annotations without a caption text"] == 1
    (tmp_path / "annotations" / "captions_train2014.json").write_text(json.dumps({**data, "images": [1, 2, 3][0]}))
    with pytest.raises(DatasetFormatError, match="captions_train2014.json: expected COCO captions"):
        load_dataset("coco", tmp_path)


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    write_image(tmp_path / "Images" / "p.jpg")
    (tmp_path / "dataset_flickr8k.json").write_text('{"images": [')
    with pytest.raises(DatasetFormatError, match="dataset_flickr8k.json, line 1: expected a JSON file"):
        load_dataset("karpathy", tmp_path)


def test_missing_folder_and_caption_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="is not a folder"):
        load_dataset("flickr8k", tmp_path / "nope")
    write_image(tmp_path / "Images" / "a.jpg")
    with pytest.raises(CaptionerError, match="no caption file for flickr8k"):
        load_dataset("flickr8k", tmp_path)


def test_layout_detection_finds_flicker8k_dataset_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "Flicker8k_Dataset" / "a.jpg")
    (tmp_path / "Flickr8k_text").mkdir()
    (tmp_path / "Flickr8k_text" / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog .\n")
    (tmp_path / "Flickr8k_text" / "Flickr_8k.trainImages.txt").write_text("a.jpg\n")
    dataset = load_dataset("flickr8k", tmp_path)
    assert dataset.records[0].image == tmp_path / "Flicker8k_Dataset" / "a.jpg"
    assert dataset.records[0].split == "train"


def test_without_data_dir_the_default_folder_is_used_or_named(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CAPTIONER_DATA", str(tmp_path))
    with pytest.raises(CaptionerError, match=f"default {tmp_path / 'flickr8k'} is not a folder"):
        load_dataset("flickr8k", None)
