"""The encoder run on images in memory: what `Captioner` captions photos with, rounded to float16 exactly as
the feature cache is, so a photo gets the caption `captioner evaluate` gives it."""

from __future__ import annotations

import numpy as np
import torch

from captioner.devices import autocast
from captioner.features.encoders import Encoder
from captioner.features.source import FeatureSource


def encode_pixels(encoder: Encoder, pixels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized images (B, 3, S, S) -> grid (B, h*w, C) and pooled (B, C) features, float16 as cached."""
    with torch.inference_mode(), autocast(device):
        grid = encoder(pixels.contiguous(memory_format=torch.channels_last)).float()  # (B, C, h, w)
    pooled = grid.mean((2, 3))  # (B, C), in fp32 before rounding to fp16
    return grid.flatten(2).transpose(1, 2).half(), pooled.half()


class EncodedImages(FeatureSource):
    """Normalized images (N, 3, S, S) already read into memory; row i is image i. The encoder runs
    `batch_size` images at a time."""

    def __init__(self, encoder: Encoder, pixels: torch.Tensor, settings: dict, device: torch.device,
                 batch_size: int = 16) -> None:
        self.encoder, self.pixels, self.settings = encoder, pixels, settings
        self.device, self.batch_size = device, batch_size
        self.skipped: dict[str, str] = {}
        self.description = f"{encoder.spec.name} on the images"

    def row(self, image: object) -> int | None:
        raise TypeError("EncodedImages names its images by position, not by file")

    def features(self, rows: list[int] | np.ndarray, use_grid: bool, *, flip: np.ndarray | None = None,
                 train: bool = False) -> torch.Tensor:
        pixels = self.pixels[torch.as_tensor(np.asarray(rows), dtype=torch.long)]
        if flip is not None and flip.any():  # mirroring normalized pixels = normalizing the mirrored image
            mask = torch.as_tensor(flip)
            pixels[mask] = pixels[mask].flip(3)
        encoded = [encode_pixels(self.encoder, pixels[start:start + self.batch_size].to(self.device), self.device)
                   [0 if use_grid else 1] for start in range(0, len(pixels), self.batch_size)]
        return torch.cat(encoded) if len(encoded) > 1 else encoded[0]
