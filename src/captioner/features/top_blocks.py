"""Features computed at every step by an encoder's last blocks from the cache of the grid below them, for
--scst_encoder_lr: those blocks go on learning in the self-critical epochs, so their output cannot be cached,
but everything below them can. The same FeatureSource as the cache, so the training step reads both alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from captioner.devices import autocast
from captioner.features.source import FeatureSource
from captioner.features.store import FeatureStore


class TopBlocksFeatures(FeatureSource):
    def __init__(self, below: FeatureStore, top: nn.Module, device: torch.device, amp: bool = True) -> None:
        """`below`: the cache of the grid under `top` (both views when mirrored features are wanted); `top`: the
        blocks and head after it, trained in place (batch norm stays in eval mode, as in the tuning)."""
        self.below, self.top, self.device, self.amp = below, top.to(device).eval().requires_grad_(True), device, amp
        self.skipped = below.skipped
        h, w, _ = below.grid_shape
        with torch.no_grad():
            probe = self.top(torch.zeros(1, below.grid_shape[2], h, w, device=device))
        # as the cache of these blocks' output would say, but for the weights, which change at every step
        self.settings = {**below.settings, "layer": "", "weights_sha256": None,
                         "grid": [probe.shape[2], probe.shape[3], probe.shape[1]]}
        self.description = f"the encoder's last blocks, learning, over the cached grid below them ({below.folder})"

    def row(self, image: Path | str) -> int | None:
        return self.below.row(image)

    def features(self, rows: list[int] | np.ndarray, use_grid: bool, *, flip: np.ndarray | None = None,
                 train: bool = False) -> torch.Tensor:
        """(B, L, C) grids or (B, C) pooled features, with gradients into the blocks when `train` (and gradients
        are on)."""
        h, w, channels = self.below.grid_shape
        cached = self.below.features(rows, True, flip=flip).to(self.device)  # (B, h*w, C) float16
        grid = cached.transpose(1, 2).reshape(len(cached), channels, h, w).float()
        with torch.set_grad_enabled(train and torch.is_grad_enabled()), autocast(self.device, self.amp):
            out = self.top(grid.contiguous(memory_format=torch.channels_last)).flatten(2).transpose(1, 2)
        return out if use_grid else out.float().mean(1)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.top.parameters())
