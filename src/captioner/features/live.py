"""Features computed from the images at every step, for `--fine_tune_encoder` and `--augment`.

The default is the frozen encoder's feature cache. Fine-tuning changes the encoder, and augmentation changes the
pixels, so both need the encoder run on each batch's images: slower (the CNN runs forward, and for fine-tuning
backward, at every step) but what a user who asks for either wants. A FeatureSource like the cache, so training
and evaluation read both the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from captioner.devices import autocast
from captioner.features.encoders import Encoder, create_encoder
from captioner.features.source import FeatureSource
from captioner.images import BadImageError, open_rgb


class LiveFeatures(FeatureSource):
    def __init__(self, images: list[Path], encoder_name: str, weights: Path | None, image_size: int | None,
                 augment: bool, fine_tune: bool, device: torch.device, amp: bool = True,
                 encoder: Encoder | None = None) -> None:
        """`encoder`: one already built (a bundle's), instead of the registry's with `weights`."""
        self.encoder: Encoder = (encoder or create_encoder(encoder_name, weights)).to(device)
        self.encoder.eval()  # batch-norm statistics stay those of ImageNet: caption batches are too small to re-estimate them
        self.encoder.requires_grad_(fine_tune)
        self.fine_tune, self.device, self.amp = fine_tune, device, amp
        self.image_size = image_size or self.encoder.spec.image_size
        self.description = f"{encoder_name} on the images (no cache: {'fine-tuned' if fine_tune else 'augmented'})"
        self.skipped = {}
        self.paths: list[Path] = []
        for path in images:
            problem = _header_problem(path)
            if problem:
                self.skipped[str(path)] = problem
            else:
                self.paths.append(path)
        self._rows = {os.path.abspath(path): row for row, path in enumerate(self.paths)}
        spec = self.encoder.spec
        self.settings = {"encoder": encoder_name, "weights_sha256": self.encoder.weights_sha256,
                         "image_size": self.image_size, "transform": spec.transform_description(self.image_size),
                         "grid": list(self.encoder.grid_shape(self.image_size)), "flip": False, "fine_tuned": fine_tune, "augmented": augment}
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
        # random crop (most of the scene kept), mirror, and mild colour changes: new views, same caption
        self.augmentation = v2.Compose([
            v2.RandomResizedCrop(self.image_size, scale=(0.7, 1.0), antialias=True), v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02), *normalize,
        ]) if augment else None

    def row(self, image: Path) -> int | None:
        return self._rows.get(os.path.abspath(image))

    def _pixels(self, row: int, train: bool, flip: bool) -> torch.Tensor:
        path = self.paths[row]
        try:
            image = open_rgb(path, draft_size=self.image_size)
        except BadImageError as error:
            raise BadImageError(f"{path}: {error}", error.kind) from error
        if train and self.augmentation is not None:
            return self.augmentation(image)
        return self.encoder.spec.prepare(image, self.image_size, flip=flip)

    def features(self, rows: list[int] | np.ndarray, use_grid: bool, *, flip: np.ndarray | None = None,
                 train: bool = False) -> torch.Tensor:
        """(B, L, C) grid or (B, C) pooled features of the given images; with gradients when fine-tuning and
        `train`; rows where `flip` is set read the mirrored image (augmentation mirrors at random anyway)."""
        flips = [False] * len(rows) if flip is None else [bool(value) for value in flip]
        pixels = torch.stack([self._pixels(int(row), train, mirrored) for row, mirrored in zip(rows, flips)])
        pixels = pixels.to(self.device)
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(self.fine_tune and train and torch.is_grad_enabled()), autocast(self.device, self.amp):
            grid = self.encoder(pixels).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, L, C)
        return grid if use_grid else grid.float().mean(1)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.encoder.parameters()) if self.fine_tune else []


def _header_problem(path: Path) -> str | None:
    """Why an image cannot be used, judged from its header alone (decoding every image up front would cost
    as much as an epoch); None when it looks fine."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - reading the header is the check
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError) as error:
        return f"not a readable image ({error.__class__.__name__})"
    return None
