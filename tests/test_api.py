"""The Python API on a small model trained in the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner import Captioner
from captioner.cli.command import main


def test_caption_paths_pil_images_and_folders(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cap = Captioner.load(tiny_checkpoint)
    images = sorted((tiny_checkpoint.parents[2] / "shapes").rglob("*.png"))[:3]
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in images[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "notes.txt").write_text("not an image, and not listed")
    results = cap.caption([images[0], Image.open(images[1]).convert("L"), folder], beam_size=3, num_captions=3)
    assert [r.image for r in results] == [str(images[0]), "<PIL image 1>", *[str(folder / p.name) for p in images[:2]]]
    first = results[0]
    assert first.text and first.tokens == first.text.split() and len(first.captions) == 3
    assert first.captions[0].score >= first.captions[1].score >= first.captions[2].score
    assert first.attention.shape == (len(first.tokens) + 1, 4, 4)  # a map per word and <end>, on the 4x4 grid
    torch.testing.assert_close(first.attention.sum((1, 2)), torch.ones(len(first.tokens) + 1))
    assert results[0].text == results[2].text  # the same file, directly or through its folder


def test_an_unreadable_image_does_not_stop_the_batch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    good = sorted((tiny_checkpoint.parents[2] / "shapes").rglob("*.png"))[0]
    broken, fine = Captioner.load(tiny_checkpoint).caption([tmp_path / "broken.jpg", good], strategy="greedy")
    assert broken.text is None and "broken.jpg" in broken.error
    assert fine.text and fine.error is None


def test_the_api_gives_the_captions_evaluate_gives(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert main(["evaluate", "--model_path", str(tiny_checkpoint), "--strategy", "greedy",
                 "--output_dir", str(tmp_path / "eval")]) == 0
    evaluated = {c["image_id"]: c["caption"] for c in json.loads((tmp_path / "eval" / "captions.json").read_text())}
    shapes = tiny_checkpoint.parents[2] / "shapes"
    paths = [next(shapes.rglob(name)) for name in evaluated]
    results = Captioner.load(tiny_checkpoint).caption(paths, strategy="greedy", batch_size=7)
    assert {Path(r.image).name: r.text for r in results} == evaluated


def test_empty_and_all_unreadable_batches(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cap = Captioner.load(tiny_checkpoint)
    from captioner.decoding.settings import DecodeSettings

    assert cap.caption_batch([], DecodeSettings("greedy")) == []
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"nothing")
    results = cap.caption([tmp_path / "a.jpg", tmp_path / "b.png"], strategy="greedy")
    assert [r.text for r in results] == [None, None] and all(r.error for r in results)


def test_the_encoder_runs_a_large_batch_in_its_own_smaller_batches(tiny_checkpoint: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cap = Captioner.load(tiny_checkpoint)
    images = [Image.open(p).convert("RGB") for p in sorted((tiny_checkpoint.parents[2] / "shapes").rglob("*.png"))[:5]]
    whole = cap.features(images)
    monkeypatch.setattr(Captioner, "encoder_batch_size", property(lambda self: 2))
    torch.testing.assert_close(cap.features(images), whole)
    assert whole.shape[0] == 5


def test_flip_average_captions_each_image_with_its_mirror_image(tiny_checkpoint: Path) -> None:
    """The API's --flip_average: the encoder reads the image and its mirror image; the captions are those of the
    averaged decoder on both views, and the attention maps are the plain view's (a map per word and <end>)."""
    from captioner.decoding.strategies import decode
    from captioner.decoding.settings import DecodeSettings
    from captioner.models.ensemble import Averaged

    cap = Captioner.load(tiny_checkpoint)
    paths = sorted((tiny_checkpoint.parents[2] / "shapes").rglob("*.png"))[:5]
    images = [Image.open(path).convert("RGB") for path in paths]
    mirrored = [image.transpose(Image.FLIP_LEFT_RIGHT) for image in images]
    views = torch.stack([cap.features(images), cap.features(mirrored)], 1)
    expected = decode(Averaged([cap.model.decoder, cap.model.decoder]), views, cap.model.vocab, DecodeSettings("beam", 3))
    results = cap.caption(paths, beam_size=3, flip_average=True)
    assert [r.text for r in results] == [" ".join(cap.model.vocab.decode(e[0].tokens)) for e in expected]
    first = results[0]
    assert first.attention.shape == (len(first.tokens) + 1, 4, 4)
    assert main(["caption", str(paths[0]), "--model_path", str(tiny_checkpoint), "--flip_average"]) == 0


def test_recommended_decoding_is_what_the_checkpoint_carries(tiny_checkpoint: Path) -> None:
    from tests.conftest import TINY_DECODING

    captioner = Captioner.load(tiny_checkpoint)
    assert captioner.recommended_decoding == TINY_DECODING
    image = sorted((tiny_checkpoint.parents[2] / "shapes").rglob("*.png"))[0]
    recommended = captioner.caption(image, **captioner.recommended_decoding)[0].text
    assert recommended == captioner.caption(image, beam_size=2, length_penalty=1.0, no_repeat_ngram=2)[0].text
