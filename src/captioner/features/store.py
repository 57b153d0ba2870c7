"""A finished feature cache, read memory-mapped: `grid.npy` (N, h*w, C) and `pooled.npy` (N, C) float16 (plus
`*_flip.npy` of the mirrored images with --augment_flip) and `manifest.json`: encoder, weights checksum, image
size, transform and the ordered image list. A cache whose settings differ from the current ones is refused,
never silently used. features/extract.py builds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from captioner.errors import CaptionerError
from captioner.features.source import FeatureSource

CACHE_FORMAT = "captioner-features"
CACHE_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CacheSettings:
    """What the cached numbers depend on; any difference makes a cache unusable."""

    encoder: str
    weights_sha256: str
    image_size: int
    transform: str
    grid: tuple[int, int, int]  # (h, w, C)
    flip: bool
    layer: str = ""  # "": the encoder's output; "below N": the grid below its last N blocks (to tune them on)

    def differences(self, other: dict) -> list[str]:
        mine = json.loads(json.dumps(asdict(self)))
        defaults = {"layer": ""}  # settings added since caches were first written: what older ones hold
        return [f"{key}: cache has {other.get(key, defaults.get(key))!r}, now {value!r}" for key, value in mine.items()
                if other.get(key, defaults.get(key)) != value]


def default_cache_root() -> Path:
    return Path(os.environ.get("CAPTIONER_CACHE", Path.home() / ".cache" / "captioner")) / "features"


def default_cache_dir(images: list[Path], settings: CacheSettings) -> Path:
    """One folder per image collection and settings, so switching encoders never clobbers a cache."""
    root = os.path.commonpath([str(path.parent) for path in images]) if images else "empty"
    tag = hashlib.sha256(f"{root}|{settings.weights_sha256}|{settings.transform}".encode()).hexdigest()[:10]
    flip = "_flip" if settings.flip else ""
    layer = "_" + settings.layer.replace(" ", "") if settings.layer else ""
    return default_cache_root() / f"{Path(root).name}_{settings.encoder}_{settings.image_size}{flip}{layer}_{tag}"


@dataclass
class FeatureStore(FeatureSource):
    """A finished cache, memory-mapped: rows are read from disk on demand, so RAM stays flat."""

    folder: Path
    settings: dict
    images: list[str]
    skipped: dict[str, str]
    grid: np.ndarray  # (N, h*w, C) float16, memory-mapped
    pooled: np.ndarray  # (N, C) float16, memory-mapped
    grid_flip: np.ndarray | None = None
    pooled_flip: np.ndarray | None = None
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {name: row for row, name in enumerate(self.images)}

    @classmethod
    def open(cls, folder: Path) -> FeatureStore:
        manifest = read_manifest(folder)
        if manifest is None:
            raise CaptionerError(f"{folder} is not a finished feature cache (no valid {MANIFEST})")
        arrays = {}
        for name in ("grid", "pooled", "grid_flip", "pooled_flip"):
            path = folder / f"{name}.npy"
            if path.exists():
                try:
                    arrays[name] = np.load(path, mmap_mode="r")
                except (ValueError, OSError) as error:
                    raise CaptionerError(f"{path} is damaged ({error}); delete {folder} to rebuild it") from error
        rows = len(manifest["images"])
        if "grid" not in arrays or arrays["grid"].shape[0] != rows or arrays["pooled"].shape[0] != rows:
            raise CaptionerError(f"{folder}: feature arrays do not match its manifest; delete the folder to rebuild it")
        return cls(folder, manifest["settings"], manifest["images"], manifest["skipped"], **arrays)

    def row(self, image: Path | str) -> int | None:
        """Row of `image`, or None if it was skipped as unreadable."""
        key = os.path.abspath(image)
        if key in self.skipped:
            return None
        try:
            return self.index[key]
        except KeyError:
            raise CaptionerError(f"{image} is not in the feature cache {self.folder}") from None

    @property
    def description(self) -> str:
        return str(self.folder)

    def features(self, rows: np.ndarray | list[int], use_grid: bool, *, flip: np.ndarray | None = None,
                 train: bool = False) -> torch.Tensor:
        """Rows as the decoder reads them: (B, L, C) grids or (B, C) pooled, float16 as stored (the decoder
        casts once); rows where `flip` is set come from the mirrored images' features."""
        rows = np.asarray(rows)
        if flip is not None and flip.any() and self.grid_flip is None:
            raise CaptionerError(f"the feature cache {self.folder} holds no mirrored features (it was built without "
                                 "--augment_flip)")
        if flip is not None and len(rows) and flip.all():  # read the mirrored rows only
            return torch.from_numpy(np.ascontiguousarray((self.grid_flip if use_grid else self.pooled_flip)[rows]))
        features = np.ascontiguousarray((self.grid if use_grid else self.pooled)[rows])
        if flip is not None and flip.any():
            flipped = self.grid_flip if use_grid else self.pooled_flip
            features[flip] = flipped[rows[flip]]
        return torch.from_numpy(features)

    def covers(self, images: list[Path]) -> bool:
        return all(os.path.abspath(image) in self.index for image in images)


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        return None
    return manifest


