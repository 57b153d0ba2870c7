"""Run the frozen encoder once per image and cache what it sees (the FeatureStore of features/store.py).

Building is crash-safe: rows are written into `<folder>.partial/` and a progress file is replaced atomically
every few seconds, so an interrupted extraction resumes where it stopped; the finished folder appears by
rename only when complete. One process at a time builds a folder (a lock file beside it). Unreadable images
are reported by name and skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner.devices import keep_freed_memory, pick_device
from captioner.errors import CaptionerError
from captioner.features.encoders import Encoder, create_encoder, get_spec
from captioner.features.pixels import encode_pixels
from captioner.features.store import (CACHE_FORMAT, CACHE_VERSION, MANIFEST, CacheSettings, FeatureStore,
                                      default_cache_dir, read_manifest)
from captioner.images import BadImageError, open_rgb
from captioner.io import atomic_write_text
from captioner.progress import progress as progress_bar

PROGRESS = "progress.json"
FLUSH_EVERY_S = 2.0  # how much work an interruption may cost; flushing every batch slows small batches


class _ImageFiles(Dataset):
    """Decodes and prepares images in DataLoader workers, overlapped with the encoder."""

    def __init__(self, paths: list[str], prepare, image_size: int, flip: bool) -> None:
        self.paths, self.prepare, self.image_size, self.flip = paths, prepare, image_size, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = open_rgb(self.paths[index], draft_size=self.image_size)
        except BadImageError as error:
            return index, None, str(error)
        tensors = [self.prepare(image, self.image_size)]
        if self.flip:
            tensors.append(self.prepare(image, self.image_size, flip=True))
        return index, torch.stack(tensors), None


def default_workers(device: torch.device) -> int:
    """Decoding workers that overlap with the encoder. On a 2-core CPU a worker steals cycles from the
    encoder's two threads and costs more than it saves (measured: 80 vs 87 images/s), so decode inline."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cpus)
    return 0 if cpus <= 2 else min(4, cpus // 4 or 1)


def _collate(items: list) -> list:
    return items


def extract_features(
    images: list[Path],
    encoder_name: str = "efficientnet_lite0",
    *,
    image_size: int | None = None,
    cache_dir: Path | None = None,
    flip: bool = False,
    weights: Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
    below_blocks: int = 0,
    encoder: Encoder | None = None,
) -> FeatureStore:
    """Return a cache holding features of `images`, reusing a valid one and building only what is missing.
    `below_blocks`: cache the grid below the encoder's last N blocks instead of its output (to tune them on);
    `encoder`: this encoder (a tuned one) instead of `encoder_name`'s registry weights."""
    keep_freed_memory()
    spec = get_spec(encoder_name)
    size = image_size or spec.image_size
    run_device = pick_device(device)
    encoder = (encoder or create_encoder(encoder_name, weights)).to(run_device)
    if below_blocks:
        encoder = encoder.below(below_blocks)
    settings = CacheSettings(encoder_name, encoder.weights_sha256, size, spec.transform_description(size),
                             encoder.grid_shape(size), flip, f"below {below_blocks}" if below_blocks else "")
    images = [Path(os.path.abspath(path)) for path in images]
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(images, settings)
    with building_lock(folder):
        return _reuse_or_build(folder, images, settings, encoder, run_device, flip, batch_size, num_workers, progress)


@contextlib.contextmanager
def building_lock(folder: Path) -> Iterator[None]:
    """One process at a time reads or builds a cache folder: two builds at once wrote into the same .partial
    folder and left a broken cache. A second process (another training run on the same data) waits, then
    finds the cache built. The lock is an empty FOLDER.lock file beside it (none on Windows, which has no flock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process building the feature cache {folder}", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _reuse_or_build(folder: Path, images: list[Path], settings: CacheSettings, encoder: Encoder,
                    run_device: torch.device, flip: bool, batch_size: int | None, num_workers: int | None,
                    progress: bool) -> FeatureStore:
    existing = None
    manifest = read_manifest(folder)
    if manifest is not None:
        if not flip and manifest["settings"].get("flip"):
            settings = replace(settings, flip=True)  # a cache with flipped rows holds the plain ones too
        differences = settings.differences(manifest["settings"])
        if differences:
            raise CaptionerError(f"the feature cache {folder} was built with other settings ("
                                 + "; ".join(differences) + "). Pass another --cache_dir, or delete it to rebuild.")
        existing = FeatureStore.open(folder)
        if existing.covers(images):
            return existing
    elif folder.exists() and any(folder.iterdir()):
        raise CaptionerError(f"{folder} exists but is not a feature cache; pass an empty or new --cache_dir")

    # Rows already cached are copied, not recomputed; the rest are encoded.
    ordered = list(existing.images) if existing else []
    known = set(ordered)
    ordered += [str(path) for path in dict.fromkeys(images) if str(path) not in known]
    _build(folder, ordered, settings, encoder, existing, run_device, batch_size, num_workers, progress)
    return FeatureStore.open(folder)


def _build(folder: Path, ordered: list[str], settings: CacheSettings, encoder: Encoder,
           existing: FeatureStore | None, device: torch.device, batch_size: int | None, num_workers: int | None,
           progress: bool) -> None:
    partial = folder.with_name(folder.name + ".partial")
    state = _resume_state(partial, ordered, settings)
    h, w, channels = settings.grid
    names = ["grid", "pooled"] + (["grid_flip", "pooled_flip"] if settings.flip else [])
    shapes = {"grid": (len(ordered), h * w, channels), "pooled": (len(ordered), channels)}
    if state is None:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        arrays = {name: open_memmap(partial / f"{name}.npy", "w+", np.float16, shapes[name.removesuffix("_flip")])
                  for name in names}
        reserve_space(partial, names)
        state = {"settings": asdict(settings), "images_sha256": _list_digest(ordered), "done": 0, "skipped": {}}
        _save_progress(partial, state)
    else:
        arrays = {name: np.load(partial / f"{name}.npy", mmap_mode="r+") for name in names}

    done = state["done"]
    if existing is not None and done < len(existing.images):  # copy reused rows, a chunk at a time
        for start in range(done, len(existing.images), 1024):
            stop = min(start + 1024, len(existing.images))
            for name in names:
                arrays[name][start:stop] = getattr(existing, name)[start:stop]
            state["done"] = stop
            _flush(arrays, partial, state)
        state["skipped"].update(existing.skipped)
        done = state["done"]

    todo = ordered[done:]
    if todo:
        _encode_into(arrays, partial, state, todo, done, encoder, settings, device, batch_size, num_workers,
                     progress)
    for array in arrays.values():
        array.flush()
    del arrays
    manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "settings": asdict(settings),
                "images": ordered, "skipped": state["skipped"], "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(partial / MANIFEST, json.dumps(manifest))
    (partial / PROGRESS).unlink()
    swap_in(partial, folder)


def _encode_into(arrays: dict, partial: Path, state: dict, todo: list[str], offset: int, encoder: Encoder,
                 settings: CacheSettings, device: torch.device, batch_size: int | None, num_workers: int | None,
                 progress: bool) -> None:
    batch = batch_size or (128 if device.type == "cuda" else 16)  # 16: fastest bf16 batch on a 2-core AMX CPU
    if num_workers is None:
        num_workers = default_workers(device)
    loader = DataLoader(_ImageFiles(todo, encoder.spec.prepare, settings.image_size, settings.flip),
                        batch_size=batch, num_workers=num_workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=4 if num_workers else None)
    model = encoder.to(memory_format=torch.channels_last)
    bar = progress_bar(total=len(todo), unit="img", desc=f"extracting {settings.encoder}", enabled=progress)
    last_flush = time.monotonic()
    with bar:
        for items in loader:
            good = [(index, tensor) for index, tensor, _ in items if tensor is not None]
            for index, _, error in items:
                if error is not None:
                    state["skipped"][todo[index]] = error
                    tqdm.write(f"skipped {error}")
            if good:
                rows = torch.tensor([offset + index for index, _ in good])
                pixels = torch.cat([tensor for _, tensor in good]).to(device, non_blocking=True)
                views = 2 if settings.flip else 1
                grid, pooled = encode_pixels(model, pixels, device)
                grid = grid.view(len(good), views, *grid.shape[1:]).cpu().numpy()
                pooled = pooled.view(len(good), views, -1).cpu().numpy()
                _write_rows(arrays["grid"], rows, grid[:, 0])
                _write_rows(arrays["pooled"], rows, pooled[:, 0])
                if settings.flip:
                    _write_rows(arrays["grid_flip"], rows, grid[:, 1])
                    _write_rows(arrays["pooled_flip"], rows, pooled[:, 1])
            state["done"] = offset + max(index for index, _, _ in items) + 1
            if time.monotonic() - last_flush > FLUSH_EVERY_S:
                _flush(arrays, partial, state)
                last_flush = time.monotonic()
            bar.update(len(items))
    _flush(arrays, partial, state)


def _write_rows(array: np.ndarray, rows: torch.Tensor, values: np.ndarray) -> None:
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == len(rows):
        array[first:last + 1] = values
    else:
        array[rows.numpy()] = values


def reserve_space(partial: Path, names: list[str]) -> None:
    """Allocate the cache files' blocks now. Memory-mapped files are sparse: on a full disk, writing a row
    would kill the process with SIGBUS halfway through; reserving up front fails at once, cleanly."""
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        for name in names:
            path = partial / f"{name}.npy"
            with open(path, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, path.stat().st_size)
    except OSError as error:
        needed = sum((partial / f"{name}.npy").stat().st_size for name in names)
        shutil.rmtree(partial, ignore_errors=True)
        raise CaptionerError(f"cannot reserve {needed / 2**30:.2f} GB for the feature cache in {partial.parent} "
                             f"({error.strerror or error}); free some space or pass another --cache_dir. "
                             "An existing cache there is untouched.") from error


def _flush(arrays: dict, partial: Path, state: dict) -> None:
    """Rows reach the disk before the progress file says they are there."""
    for array in arrays.values():
        array.flush()
    _save_progress(partial, state)


def _save_progress(partial: Path, state: dict) -> None:
    atomic_write_text(partial / PROGRESS, json.dumps(state))


def _resume_state(partial: Path, ordered: list[str], settings: CacheSettings) -> dict | None:
    """The progress of an interrupted build of the same thing, or None to start afresh."""
    try:
        state = json.loads((partial / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    if state.get("images_sha256") != _list_digest(ordered) or settings.differences(state.get("settings", {})):
        return None
    return state


def _list_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def swap_in(partial: Path, folder: Path) -> None:
    """Replace `folder` by the finished `partial`; the old cache stays until the new one is in place."""
    if folder.exists():
        retired = folder.with_name(folder.name + ".old")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(folder, retired)
        os.replace(partial, folder)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(partial, folder)
