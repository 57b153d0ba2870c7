"""A tuned encoder's feature cache, made from the cache of the grid below its tuned blocks: those blocks run over
the cached grid (seconds) instead of the whole encoder over the images again (minutes).

The result is an ordinary feature cache (features/store.py) whose settings name the tuned weights, the one
`extract_features` with the tuned encoder would build from the images: evaluation and resumed runs find it
by those settings, and build it from the images where it is gone.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import nn

from captioner.devices import autocast
from captioner.errors import CaptionerError
from captioner.features.extract import building_lock, reserve_space, swap_in
from captioner.features.store import CACHE_FORMAT, CACHE_VERSION, MANIFEST, CacheSettings, FeatureStore, read_manifest
from captioner.io import atomic_write_text

CHUNK = 64


def derived_folder(below: FeatureStore, weights_sha256: str) -> Path:
    """Where the tuned encoder's cache goes: beside the cache it is made from, named by the tuned weights."""
    return below.folder.with_name(f"{below.folder.name}_tuned_{weights_sha256[:10]}")


def derive_features(below: FeatureStore, top: nn.Module, weights_sha256: str, device: torch.device,
                    folder: Path | None = None, log=print) -> FeatureStore:
    """The features of `below`'s images after `top` (the tuned blocks and the head), as a finished cache."""
    folder = folder or derived_folder(below, weights_sha256)
    h, w, _ = below.grid_shape
    top = top.to(device).eval()
    with torch.no_grad():
        probe = top(torch.zeros(1, below.grid_shape[2], h, w, device=device))
    settings = CacheSettings(below.settings["encoder"], weights_sha256, below.settings["image_size"],
                             below.settings["transform"], (probe.shape[2], probe.shape[3], probe.shape[1]),
                             bool(below.settings.get("flip")))
    with building_lock(folder):
        manifest = read_manifest(folder)
        if manifest is not None and not settings.differences(manifest["settings"]) and \
                manifest["images"] == below.images:
            return FeatureStore.open(folder)
        if manifest is None and folder.exists() and any(folder.iterdir()):
            raise CaptionerError(f"{folder} exists but is not a feature cache; move it away to tune the encoder")
        started = time.perf_counter()
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        views = [("", below.grid)] + ([("_flip", below.grid_flip)] if settings.flip else [])
        rows, cells = len(below.images), settings.grid[0] * settings.grid[1]
        arrays = {}
        for suffix, _ in views:
            arrays[f"grid{suffix}"] = open_memmap(partial / f"grid{suffix}.npy", "w+", np.float16,
                                                  (rows, cells, settings.grid[2]))
            arrays[f"pooled{suffix}"] = open_memmap(partial / f"pooled{suffix}.npy", "w+", np.float16,
                                                    (rows, settings.grid[2]))
        reserve_space(partial, list(arrays))  # a full disk is one clear error now, not SIGBUS half way
        try:
            for suffix, source in views:
                grid, pooled = arrays[f"grid{suffix}"], arrays[f"pooled{suffix}"]
                for start in range(0, rows, CHUNK):
                    cached = torch.from_numpy(np.array(source[start:start + CHUNK]))  # (B, h*w, C) fp16
                    inputs = cached.transpose(1, 2).reshape(len(cached), -1, h, w).float().to(device)
                    with torch.inference_mode(), autocast(device):
                        out = top(inputs.contiguous(memory_format=torch.channels_last)).float()  # (B, C', h', w')
                    grid[start:start + len(out)] = out.flatten(2).transpose(1, 2).half().cpu().numpy()
                    pooled[start:start + len(out)] = out.mean((2, 3)).half().cpu().numpy()
                grid.flush()
                pooled.flush()
            del grid, pooled, arrays
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise CaptionerError(f"cannot write the tuned encoder's features into {partial} "
                                 f"({error.strerror or error}); free some space") from error
        manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "settings": asdict(settings),
                    "images": below.images, "skipped": below.skipped, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "derived_from": str(below.folder)}
        atomic_write_text(partial / MANIFEST, json.dumps(manifest))
        swap_in(partial, folder)
    log(f"tuned encoder's features: {rows} images through the tuned blocks in {time.perf_counter() - started:.0f} s "
        f"-> {folder}")
    return FeatureStore.open(folder)

