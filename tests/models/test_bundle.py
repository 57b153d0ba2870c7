"""Bundles and ONNX files from the small model trained for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner import Captioner
from captioner.cli.command import main


def images(checkpoint: Path, count: int = 12) -> list[Path]:
    return sorted((checkpoint.parents[2] / "shapes").rglob("*.png"))[:count]


def test_the_bundle_gives_the_checkpoint_captions_exactly(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert main(["export", "--model_path", str(tiny_checkpoint), "--output", str(bundle)]) == 0
    assert sorted(p.name for p in bundle.iterdir()) == ["concepts.json", "config.json", "model.safetensors", "vocab.json"]
    config = json.loads((bundle / "config.json").read_text())
    assert config["encoder"]["name"] == "tiny_random" and config["decoder"]["decoder"] == "attention"
    original = Captioner.load(tiny_checkpoint).caption(images(tiny_checkpoint), num_captions=3)
    exported = Captioner.load(bundle).caption(images(tiny_checkpoint), num_captions=3)
    assert [[c.text for c in r.captions] for r in exported] == [[c.text for c in r.captions] for r in original]
    assert [r.score for r in exported] == [r.score for r in original]
    assert [r.tags for r in exported] == [r.tags for r in original] and original[0].tags  # the bundle keeps the head
    assert main(["export", "--model_path", str(tiny_checkpoint), "--output", str(bundle)]) == 2  # never overwrites
    # the bundle keeps the model's recommended decoding, for the API, the page and `caption --recommended`
    assert Captioner.load(bundle).recommended_decoding == Captioner.load(tiny_checkpoint).recommended_decoding != {}
    assert main(["caption", str(images(tiny_checkpoint, 1)[0]), "--model_path", str(bundle), "--recommended"]) == 0


def test_onnx_files_match_pytorch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    bundle = tmp_path / "bundle"
    assert main(["export", "--model_path", str(tiny_checkpoint), "--output", str(bundle), "--onnx"]) == 0
    cap = Captioner.load(bundle, device="cpu")
    record = json.loads((bundle / "config.json").read_text())["onnx"]
    pixels = torch.randn(3, 3, cap.image_size, cap.image_size)
    encoder = onnxruntime.InferenceSession(str(bundle / "encoder.onnx"))
    (grid,) = encoder.run(None, {"pixels": pixels.numpy()})
    with torch.no_grad():
        expected = cap.encoder.trunk(pixels).flatten(2).transpose(1, 2)
    np.testing.assert_allclose(grid, expected.numpy(), rtol=1e-4, atol=1e-4)
    start = onnxruntime.InferenceSession(str(bundle / "decoder_start.onnx"))
    step = onnxruntime.InferenceSession(str(bundle / "decoder_step.onnx"))
    names = record["decoder_step"]["inputs"][1:]
    state = dict(zip(names, start.run(None, {"features": grid})))
    decoder = cap.model.decoder
    with torch.no_grad():
        torch_state = decoder.start(torch.from_numpy(grid))
        tokens = torch.full((3,), cap.model.vocab.start_id)
        for _ in range(3):
            outputs = step.run(None, {"tokens": tokens.numpy(), **state})
            logits, torch_state, alpha = decoder.step(tokens, torch_state)
            np.testing.assert_allclose(outputs[0], logits.numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(outputs[-1], alpha.numpy(), rtol=1e-4, atol=1e-5)
            state = dict(zip(names, outputs[1:1 + len(names)]))  # next.* become state.*
            tokens = logits.argmax(1)


def test_damaged_bundles_and_bad_destinations_are_one_clear_error(tiny_checkpoint: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a_file").write_text("")
    assert main(["export", "--model_path", str(tiny_checkpoint), "--output", str(tmp_path / "a_file")]) == 2
    assert "a_file is a file; choose a new folder" in capsys.readouterr().err
    bundle = tmp_path / "bundle"
    assert main(["export", "--model_path", str(tiny_checkpoint), "--output", str(bundle)]) == 0
    weights = (bundle / "model.safetensors").read_bytes()
    image = str(images(tiny_checkpoint, 1)[0])

    def caption_error() -> str:
        capsys.readouterr()
        assert main(["caption", image, "--model_path", str(bundle)]) == 2
        return capsys.readouterr().err

    (bundle / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert "is not a readable captioner bundle" in caption_error()
    (bundle / "model.safetensors").write_bytes(weights)
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "encoder": {**config["encoder"], "name": "resnet34"}}))
    error = caption_error()
    assert "its encoder weights do not fit the resnet34 encoder that config.json names" in error and len(error) < 400
    (bundle / "config.json").unlink()
    assert "looks like an exported bundle but has no config.json" in caption_error()


def test_a_transformer_bundles_exactly_and_refuses_onnx_clearly(tiny_checkpoint: Path,
                                                                  tiny_transformer_checkpoint: Path, tmp_path: Path,
                                                                  capsys) -> None:
    pytest.importorskip("onnxscript")
    bundle = tmp_path / "bundle"
    assert main(["export", "--model_path", str(tiny_transformer_checkpoint), "--output", str(bundle)]) == 0
    photos = images(tiny_checkpoint, 6)  # the shapes images the transformer was trained on
    original = Captioner.load(tiny_transformer_checkpoint).caption(photos, num_captions=2)
    exported = Captioner.load(bundle).caption(photos, num_captions=2)
    assert [[c.text for c in r.captions] for r in exported] == [[c.text for c in r.captions] for r in original]
    assert exported[0].attention is not None and exported[0].attention.shape[0] == len(exported[0].tokens) + 1
    capsys.readouterr()
    assert main(["export", "--model_path", str(tiny_transformer_checkpoint), "--output", str(tmp_path / "onnx"),
                 "--onnx"]) == 2
    error = capsys.readouterr().err
    assert "transformer" in error and "without --onnx" in error
    assert not (tmp_path / "onnx" / "config.json").exists()  # refused before anything was written
