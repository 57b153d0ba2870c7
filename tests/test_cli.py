from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from captioner.cli import main
from tests.conftest import write_image


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
    from captioner import cli
    from captioner.presets import DECODING, PRESETS

    seen = {}
    monkeypatch.setattr(cli, "run_train", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["train", "--preset", "flickr8k_best", "--epochs", "3"]) == 0
    assert seen["epochs"] == 3 and seen["encoder"] == PRESETS["flickr8k_best"]["encoder"]
    assert seen["augment_flip"] is True and seen["preset"] == "flickr8k_best"
    assert seen["decoding"] == DECODING["flickr8k_best"]  # stored with the model, for --recommended


def test_every_preset_recommends_a_valid_decoding() -> None:
    from captioner.decoding import DecodeSettings
    from captioner.presets import DECODING, PRESETS

    assert set(DECODING) == set(PRESETS)
    for decoding in DECODING.values():
        DecodeSettings(**decoding)
