"""Checkpoints are plain dicts of tensors and builtins, written atomically and loaded with weights_only=True."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch

from captioner.errors import CaptionerError, first_line
from captioner.io import atomic_write_bytes

CHECKPOINT_FORMAT = "captioner-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    """Serialise fully in memory first, then write atomically: a crash never leaves a half-written file."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **checkpoint}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path | str, mmap: bool = False) -> dict:
    """`mmap`: tensors are read from the file only when used, for a look at the settings alone (milliseconds
    instead of a read of the whole file)."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            raise CaptionerError(f"{path} looks like an exported bundle but has no config.json; export the model again")
        inside = "; it holds best.pt" if (path / "best.pt").is_file() else ""
        raise CaptionerError(f"{path} is a folder, not a checkpoint file{inside}: name the .pt file (RUN/best.pt)")
    if not path.is_file():
        raise CaptionerError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as error:
        raise CaptionerError(f"{path} is not a readable checkpoint (truncated, damaged or another kind of file: "
                             f"{first_line(error, 120)})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CaptionerError(f"{path} is not a captioner checkpoint")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CaptionerError(f"{path} has checkpoint format version {checkpoint.get('version')}; "
                             f"this captioner reads version {CHECKPOINT_VERSION}")
    return checkpoint
