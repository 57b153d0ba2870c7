"""`captioner tag`, Captioner.tag and the tags beside the captions; a model made before concepts still loads and
captions, and refuses to tag with a clear message."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from captioner import Captioner
from captioner.cli.command import main
from captioner.errors import CaptionerError
from tests.conftest import write_image

LEGACY = Path(__file__).parents[1] / "models" / "legacy" / "checkpoint.pt"


def photos(checkpoint: Path, count: int = 3) -> list[Path]:
    return sorted((checkpoint.parents[2] / "shapes").rglob("*.png"))[:count]


def test_tag_writes_each_images_concepts_with_probabilities(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    images = photos(tiny_checkpoint)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["tag", *map(str, images), str(broken), "--model_path", str(tiny_checkpoint), "--top_k", "4",
                 "--format", "json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [row["image"] for row in rows] == [*map(str, images), str(broken)]
    tags = rows[0]["tags"]
    assert len(tags) == 4 and all(0 <= tag["probability"] <= 1 for tag in tags)
    assert [tag["probability"] for tag in tags] == sorted((tag["probability"] for tag in tags), reverse=True)
    assert "error" in rows[-1] and "broken.jpg" in captured.err
    assert main(["tag", str(images[0]), "--model_path", str(tiny_checkpoint), "--threshold", "0.999"]) == 0
    assert capsys.readouterr().out.strip() == f"{images[0]}"  # nothing that sure
    assert main(["tag", str(images[0]), "--model_path", str(tiny_checkpoint), "--format", "csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == ["image", "rank", "tag", "probability", "error"] and len(table) == 11  # ten tags


def test_the_api_and_caption_carry_the_tags(tiny_checkpoint: Path, capsys) -> None:
    captioner = Captioner.load(tiny_checkpoint, "cpu")
    image = photos(tiny_checkpoint, 1)[0]
    (tagged,) = captioner.tag(image, top_k=5)
    assert len(tagged.tags) == 5 and not tagged.captions
    (captioned,) = captioner.caption(image, beam_size=2)
    assert captioned.tags[:5] == tagged.tags and captioned.text  # the same tags beside the caption
    assert main(["caption", str(image), "--model_path", str(tiny_checkpoint), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["tags"][0]["tag"] == tagged.tags[0][0]


def test_a_model_without_a_concept_head_captions_but_refuses_to_tag(tmp_path: Path, capsys) -> None:
    old = Captioner.load(LEGACY, "cpu")
    image = write_image(tmp_path / "photo.png", (64, 64))
    (result,) = old.caption(image)
    assert result.text is not None and result.tags == []
    with pytest.raises(CaptionerError, match="has no concept head"):
        old.tag(image)
    assert main(["tag", str(image), "--model_path", str(LEGACY)]) == 2
    assert "has no concept head, so it cannot tag images" in capsys.readouterr().err


def test_evaluate_scores_the_tags_beside_the_captions_words(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert main(["evaluate", "--model_path", str(tiny_checkpoint), "--strategy", "greedy", "--max_images", "8",
                 "--output_dir", str(tmp_path / "eval")]) == 0
    tags = json.loads((tmp_path / "eval" / "metrics.json").read_text())["tags"]
    assert set(tags) == {"present in >= 2 references", "present in >= 1 reference"}
    for by_source in tags.values():
        assert set(by_source) == {"head", "caption words"}
        assert all(0 <= value <= 100 for scores in by_source.values() for value in scores.values())
