"""Models written before the package was laid out by stage still load and caption as they did: legacy/ holds a
checkpoint and its exported bundle made by that code, with the captions it gave (in fp32, the same on every CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.api import Captioner
from captioner.decoding.settings import DecodeSettings

LEGACY = Path(__file__).with_name("legacy")
IMAGES = [str(LEGACY / "shapes_00000.png"), str(LEGACY / "shapes_00001.png")]
SETTINGS = {"greedy": DecodeSettings("greedy", amp=False), "beam2": DecodeSettings(beam_size=2, num_captions=2, amp=False)}


@pytest.mark.parametrize("path", ["checkpoint.pt", "bundle"])
def test_a_model_written_before_the_layout_captions_as_it_did(path: str) -> None:
    expected = json.loads((LEGACY / "expected_captions.json").read_text())
    captioner = Captioner.load(LEGACY / path, "cpu")
    for name, settings in SETTINGS.items():
        results = [result for batch in captioner.caption_batches(IMAGES, settings) for result in batch]
        got = [[[caption.text, caption.score] for caption in result.captions] for result in results]
        assert [[text for text, _ in image] for image in got] == [[text for text, _ in image] for image in expected[name]]
        assert [score for image in got for _, score in image] == pytest.approx(
            [score for image in expected[name] for _, score in image], abs=1e-4)
