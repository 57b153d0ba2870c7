"""Training settings that are wrong on their own are refused before any work, or named as ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.data.formats import load_dataset
from captioner.errors import CaptionerError
from captioner.training.config import unused_schedule_options
from captioner.training.schedulers import ScheduleSettings
from captioner.training.setup import build_trainer
from tests.training.helpers import small


def test_schedule_settings_without_use_scheduler_are_named_as_ignored(shapes: Path, tmp_path: Path) -> None:
    schedule = ScheduleSettings(scheduler_type="step", scheduler_step_size=2)
    assert unused_schedule_options(small(shapes, tmp_path, schedule=schedule)) == ["--scheduler_type",
                                                                                   "--scheduler_step_size"]
    assert unused_schedule_options(small(shapes, tmp_path, schedule=schedule, use_scheduler=True)) == []


@pytest.mark.parametrize("option, value, expected", [
    ("batch_size", 0, "--batch_size 0: must be at least 1"), ("learning_rate", -1.0, "--learning_rate -1: must be above 0"),
    ("drop_prob", 1.5, "--drop_prob 1.5: must be at least 0 and below 1"), ("hidden_size", 0, "--hidden_size 0"),
    ("label_smoothing", 2.0, "--label_smoothing 2"), ("max_length", 0, "--max_length 0"),
    ("scst_samples", 1, "--scst_samples 1: must be at least 2"), ("subset_fraction", 1.5, "--subset_fraction 1.5"),
    ("epochs", 0, "nothing to train")])
def test_out_of_range_numbers_are_refused_before_any_work(shapes: Path, tmp_path: Path, option: str, value: float,
                                                          expected: str) -> None:
    with pytest.raises(CaptionerError, match=expected):
        build_trainer(small(shapes, tmp_path, **{option: value}, cache_dir=str(tmp_path / "never")), ["captioner"])
    assert not (tmp_path / "never").exists()


def test_an_out_of_range_schedule_setting_is_refused(shapes: Path, tmp_path: Path) -> None:
    schedule = ScheduleSettings(scheduler_type="step", scheduler_step_size=0)
    with pytest.raises(CaptionerError, match="--scheduler_step_size 0: must be at least 1"):
        build_trainer(small(shapes, tmp_path, use_scheduler=True, schedule=schedule), ["captioner"])


def test_a_learning_rate_factor_of_zero_is_refused(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="--scst_lr_decay 0"):
        build_trainer(small(shapes, tmp_path, scst_epochs=1, scst_lr_decay=0.0), ["captioner"])


def test_mirroring_captions_that_name_sides_is_warned_about(shapes: Path, tmp_path: Path) -> None:
    from captioner.training.config import sided_share

    records = load_dataset("shapes", shapes).split("train")
    assert sided_share(records) > 0.05  # "... to the left of ..."
    run = build_trainer(small(shapes, tmp_path, epochs=1, augment_flip=True), ["captioner"]).run()
    assert "of the training captions say 'left' or 'right'" in (run / "train.log").read_text()
