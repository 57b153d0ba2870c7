"""FeatureSource: what training, evaluation and the Python API read image features from, whether the features
come from the cache (FeatureStore), from the encoder run on image files (LiveFeatures: fine-tuning,
augmentation) or from the encoder run on images in memory (EncodedImages: captioning photos)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch


class FeatureSource(ABC):
    """Images are named by row; `row(image)` finds an image file's row (None: the encoder could not read it)."""

    settings: dict  # encoder, weights_sha256, image_size, transform, grid (h, w, C), flip: what features depend on
    skipped: dict[str, str]  # image -> why it has no features
    description: str  # where the features come from, for logs

    @abstractmethod
    def row(self, image: Path | str) -> int | None:
        """The row of an image file, or None when it was left out as unreadable."""

    @abstractmethod
    def features(self, rows: list[int] | np.ndarray, use_grid: bool, *, flip: np.ndarray | None = None,
                 train: bool = False) -> torch.Tensor:
        """(B, L, C) grids or (B, C) pooled features of these rows; rows where `flip` is set are those of the
        mirrored image. `train`: augmentation and gradients into a fine-tuned encoder, where the source has them."""

    def both_views(self, rows: list[int] | np.ndarray, use_grid: bool) -> torch.Tensor:
        """(B, 2, ...): each image's features and its mirror image's, for --flip_average."""
        plain = self.features(rows, use_grid)
        mirrored = self.features(rows, use_grid, flip=np.ones(len(rows), dtype=bool))
        return torch.stack([plain, mirrored], 1)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        h, w, c = self.settings["grid"]
        return int(h), int(w), int(c)
