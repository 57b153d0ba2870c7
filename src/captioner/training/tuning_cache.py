"""The tuned blocks of an earlier run with the same tuning, kept beside the cache below them: the preset's decoders
(attention, GRU, LSTM; with or without --use_concepts) read the same tuned encoder, and every run after the first
skips the minutes of tuning. The key covers everything the tuning reads, so a changed setting tunes again."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import torch

from captioner.features.store import FeatureStore
from captioner.io import atomic_write_bytes


def tuning_key(below: FeatureStore, targets: torch.Tensor, rows: dict[str, np.ndarray], settings: dict) -> str:
    """A hash of the cache below the tuned blocks, the concept targets, the train and dev rows and the settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"below": below.settings, "images": len(below.images), **settings},
                             sort_keys=True, default=str).encode())
    digest.update(targets.detach().cpu().contiguous().numpy().tobytes())
    for split in sorted(rows):
        digest.update(split.encode())
        digest.update(np.ascontiguousarray(rows[split], dtype=np.int64).tobytes())
    return digest.hexdigest()


def tuning_file(below: FeatureStore, key: str) -> Path:
    return below.folder.with_name(f"{below.folder.name}_tunings") / f"{key[:16]}.pt"


def load_tuning(path: Path, key: str) -> tuple[dict[str, torch.Tensor], list[dict]] | None:
    """The tuned blocks' weights and history saved under `key`; None when absent, unreadable or another key's."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError):
        return None
    if not isinstance(saved, dict) or saved.get("key") != key or not {"state", "history"} <= saved.keys():
        return None
    return saved["state"], saved["history"]


def save_tuning(path: Path, key: str, state: dict[str, torch.Tensor], history: list[dict]) -> None:
    buffer = io.BytesIO()
    torch.save({"key": key, "state": state, "history": history}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
