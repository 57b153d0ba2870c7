"""Helpers of the training tests: a config that trains on the small synthetic set in seconds."""

from __future__ import annotations

import json
from pathlib import Path

from captioner.training.config import TrainConfig


def small(shapes: Path, tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(dataset_type="shapes", data_dir=str(shapes), encoder="tiny_random", cache_dir=str(tmp_path / "cache"),
                    decoder="attention", embed_size=16, hidden_size=16, attention_dim=16, epochs=3, batch_size=16,
                    learning_rate=3e-3, output_dir=str(tmp_path / "runs"), freq_threshold=1, num_workers=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def history(run: Path) -> list[dict]:
    return json.loads((run / "metrics_history.json").read_text())
