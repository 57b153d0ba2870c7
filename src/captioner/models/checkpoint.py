"""Checkpoints are plain dicts of tensors and builtins, written atomically and loaded with weights_only=True."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch

from captioner.errors import CaptionerError
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
        raise CaptionerError(f"{path} is not a readable checkpoint: {what_is_wrong(path, error)}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CaptionerError(f"{path} is not a captioner checkpoint")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CaptionerError(f"{path} has checkpoint format version {checkpoint.get('version')}; "
                             f"this captioner reads version {CHECKPOINT_VERSION}")
    return checkpoint


MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"%PDF": "a PDF",
         b"{": "a JSON or text file", b"\x1f\x8b": "a gzip archive", b"<": "an HTML or XML file"}


def what_is_wrong(path: Path, error: BaseException) -> str:
    """Why torch.load refused the file, judged from the file itself: PyTorch's own message names its
    unpickling options, which point the user the wrong way (it is kept for --verbose)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):  # the zip archive every torch.save writes
        if not zipfile.is_zipfile(path):
            return "the file is cut short or damaged (a PyTorch archive without its end: was it copied in part?)"
        if "weights only" in str(error).lower():
            return ("it holds Python objects other than tensors and plain values, which captioner does not unpickle "
                    "(for safety); it was not written by captioner")
        return "the PyTorch archive inside is damaged"
    if not head.strip(b"\x00"):
        return "the file holds only zero bytes (a disk or copy failure?)"
    kind = next((name for magic, name in MAGIC.items() if head.startswith(magic)), None)
    if kind:
        return f"it is {kind}, not a PyTorch file"
    return "it is not a file that torch.save wrote (or it is an older PyTorch format)"
