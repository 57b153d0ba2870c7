"""Attention pictures from the small model trained for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.cli.command import main
from captioner.data.vocab import Vocabulary
from captioner.models.decoders import DecoderConfig, build_decoder
from captioner.visualize import heatmap
from captioner.decoding.trace import trace_caption


def test_basic_and_advanced_pictures(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    image = sorted((tiny_checkpoint.parents[2] / "shapes").rglob("*.png"))[0]
    for advanced in (False, True):
        output = tmp_path / f"picture_{advanced}.png"
        options = ["--advanced"] if advanced else []
        assert main(["visualize", str(image), "--model_path", str(tiny_checkpoint), "--output", str(output),
                     *options]) == 0
        with Image.open(output) as picture:
            assert picture.width > 600 and picture.height > 300
    assert "attention picture" in capsys.readouterr().out


def test_models_without_attention_are_a_clear_error(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from captioner.models.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(tiny_checkpoint)
    config = DecoderConfig(**{**checkpoint["model_config"], "decoder": "lstm"})
    lstm = tmp_path / "lstm.pt"
    save_checkpoint(lstm, {**checkpoint, "model_config": config.to_dict(), "model": build_decoder(config).state_dict()})
    image = sorted((tiny_checkpoint.parents[2] / "shapes").rglob("*.png"))[0]
    assert main(["visualize", str(image), "--model_path", str(lstm)]) == 2
    assert "no attention to show" in capsys.readouterr().err
    # its trace replays the plain image alone, so a caption chosen with the mirror image too would not match it
    assert main(["visualize", str(image), "--model_path", str(tiny_checkpoint), "--flip_average"]) == 2
    assert "leave out --flip_average" in capsys.readouterr().err


def test_options_it_cannot_honour_are_refused_before_the_model_loads(tmp_path: Path, capsys) -> None:
    image, missing_model = str(tmp_path / "a.png"), str(tmp_path / "no_model.pt")
    assert main(["visualize", image, "--model_path", missing_model, "--output", str(tmp_path / "a.jpg")]) == 2
    assert "the attention picture is a PNG; name a .png file" in capsys.readouterr().err
    assert main(["visualize", image, "--model_path", missing_model, "--num_captions", "3"]) == 2
    assert "visualize draws the best caption only" in capsys.readouterr().err
    assert main(["caption", image, "--model_path", missing_model, "--strategy", "greedy", "--num_captions", "3"]) == 2
    assert "greedy decoding writes one caption per image, not 3" in capsys.readouterr().err


def test_trace_replays_the_caption_step_by_step() -> None:
    vocab = Vocabulary.build([["a", "red", "square"]], freq_threshold=1)
    torch.manual_seed(0)
    decoder = build_decoder(DecoderConfig("attention", len(vocab), 8, 6, 10, 5, drop_prob=0.0)).eval()
    tokens = vocab.encode(["a", "red", "square"])[1:-1]
    trace = trace_caption(decoder, torch.randn(6, 8), vocab, tokens, (2, 3))
    assert trace.words == ["a", "red", "square", "<end>"]
    assert trace.attention.shape == (4, 2, 3) and np.allclose(trace.attention.sum((1, 2)), 1, atol=1e-5)
    assert ((0 < trace.probabilities) & (trace.probabilities <= 1)).all()
    assert (trace.entropy <= np.log(6) + 1e-6).all()


def test_heatmap_is_smooth_and_normalized() -> None:
    grid = np.zeros((3, 3))
    grid[1, 1] = 1
    values = heatmap(grid, (90, 60))
    assert values.shape == (60, 90) and values.max() == pytest.approx(1)
    assert values[30, 45] > values[5, 5] and values[30, 30] > 0.05  # peaks at the centre, fades smoothly
