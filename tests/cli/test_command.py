from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner.cli.command import main
from tests.conftest import TINY_DECODING, write_image


def test_data_stats_json(tmp_path: Path, capsys) -> None:
    write_image(tmp_path / "Images" / "a.jpg")
    write_image(tmp_path / "Images" / "b.jpg")
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,A red dog .\na.jpg,A dog .\nb.jpg,A dog !\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("b.jpg\n")
    assert main(["data", "stats", "--dataset-type", "csv", "--data-dir", str(tmp_path), "--json",
                 "--freq_threshold", "2"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 2 and stats["captions"] == 3
    assert stats["splits"] == {"train": 1, "dev": 0, "test": 1}
    assert stats["skipped"] == {}
    assert stats["vocab_size"] == 6  # specials + "a", "dog" (train split only, seen twice)


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "captioner", "data", "stats", "--dataset_type", "flickr8k",
                             "--data_dir", str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("captioner: error:") and "missing" in result.stderr


def test_a_preset_sets_defaults_that_explicit_flags_override(monkeypatch) -> None:
    from captioner.cli import command as cli
    from captioner.cli import train
    from captioner.training.presets import DECODING, PRESETS

    seen = {}
    monkeypatch.setattr(train, "run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["train", "--preset", "flickr8k_best", "--epochs", "3"]) == 0
    assert seen["epochs"] == 3 and seen["encoder"] == PRESETS["flickr8k_best"]["encoder"]
    assert seen["augment_flip"] is True and seen["preset"] == "flickr8k_best"
    assert seen["decoding"] == DECODING["flickr8k_best"]  # stored with the model, for --recommended


def test_every_preset_recommends_a_decoding_that_caption_and_evaluate_and_the_api_take() -> None:
    from captioner.cli.command import build_parser
    from captioner.decoding.settings import RECOMMENDABLE, DecodeSettings, settings_from
    from captioner.training.presets import DECODING, PRESETS

    parsers = build_parser().subcommand_parsers
    for command in ("caption", "evaluate"):
        assert set(RECOMMENDABLE) <= {action.dest for action in parsers[command]._actions}, command
    settings_from({name: getattr(DecodeSettings(), name) for name in RECOMMENDABLE})  # what Captioner.caption takes
    assert set(DECODING) == set(PRESETS)
    for decoding in DECODING.values():
        assert set(decoding) <= set(RECOMMENDABLE)
        DecodeSettings(**decoding)


def with_decoding(checkpoint: Path, target: Path, decoding: dict | None, preset: str | None = None) -> Path:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["train_config"].update(decoding=decoding, preset=preset)
    torch.save(saved, target)
    return target


def test_a_recommendation_becomes_defaults_that_explicit_flags_override(monkeypatch, tiny_checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    from captioner.cli import caption
    from captioner.cli import command as cli

    mirrored = with_decoding(tiny_checkpoint, tmp_path / "mirrored.pt", {**TINY_DECODING, "flip_average": True})
    seen = {}
    monkeypatch.setattr(caption, "run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["caption", "x.png", "--model_path", str(mirrored), "--recommended"]) == 0
    assert seen["flip_average"] is True and seen["length_penalty"] == 1.0 and seen["beam_size"] == 2
    assert cli.main(["caption", "x.png", "--model_path", str(mirrored), "--recommended", "--no-flip_average",
                     "--beam_size", "4"]) == 0
    assert seen["flip_average"] is False and seen["beam_size"] == 4 and seen["no_repeat_ngram"] == 2


def test_recommendations_of_older_preset_models_and_unknown_options(tiny_checkpoint: Path, tmp_path: Path,
                                                                   capsys) -> None:
    from captioner.training.presets import DECODING
    from captioner.decoding.recommended import recommended_decoding

    # trained from the preset before presets stored their decoding: the preset's own
    older = with_decoding(tiny_checkpoint, tmp_path / "older.pt", None, preset="flickr8k_best")
    assert recommended_decoding(older) == DECODING["flickr8k_best"]
    future = with_decoding(tiny_checkpoint, tmp_path / "future.pt", {"beam_size": 2, "seed": 3})
    assert main(["evaluate", "--recommended", "--model_path", str(future)]) == 2
    assert "recommends decoding options this captioner does not know: seed" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["extract", "--dataset_type", "shapes", "--num_workers", "-1"], "--num_workers/--num-workers: must be at least 0, not -1"),
    (["caption", "x.jpg", "--model_path", "m.pt", "--batch_size", "0"], "--batch_size/--batch-size: must be at least 1"),
    (["train", "--image_size", "abc"], "--image_size/--image-size: invalid whole_number value: 'abc'"),
])
def test_counts_below_their_least_are_refused_while_parsing(argv: list[str], expected: str,
                                                            capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert expected in capsys.readouterr().err
