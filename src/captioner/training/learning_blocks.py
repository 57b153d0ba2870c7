"""--scst_encoder_lr: the tuned encoder's last blocks (--tune_encoder_epochs) go on learning in the self-critical
epochs, from the captions' own reward, instead of staying as the concepts tuned them; --xe_encoder_lr: in the
cross-entropy epochs too, from the captions themselves.

Self-critical batches are images (each sampled several times), and the cross-entropy epochs where the blocks learn
batch each image's captions together (training/batches.py), so the blocks run once per image: a fifth of what
running them for every caption would cost. They read the cached grid below them (features/top_blocks.py); after
each epoch their output is cached again (features/derive.py), so that the dev captions, the checkpoint and a later
`captioner evaluate` read the blocks as that epoch left them. With --learning_blocks, only the last of the tuned
blocks learn, and the grid after the others is cached once too: a cheaper step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from captioner.errors import CaptionerError
from captioner.features.derive import derive_features
from captioner.features.encoders import Encoder, module_sha256
from captioner.features.store import FeatureStore
from captioner.features.top_blocks import TopBlocksFeatures
from captioner.models.loading import tuned_encoder
from captioner.training.config import TrainConfig
from captioner.training.encoder_tuning import TunedEncoder
from captioner.training.tuned_features import cache_below, say


class LearningBlocks:
    def __init__(self, encoder: Encoder, tuned: TunedEncoder, below: FeatureStore, device: torch.device,
                 amp: bool = True, learning: int | None = None, log: Callable[[str], None] = print) -> None:
        """`learning`: how many of the tuned blocks (the last ones) learn; the others stay as tuned, and the grid
        after them is cached once, so each step runs only the learning ones."""
        self.encoder, self.tuned, self.device = encoder, tuned, device
        self.top = encoder.split(tuned.blocks)[1]  # all the tuned blocks and the head: what a checkpoint keeps
        self.learning = learning or tuned.blocks
        if not 1 <= self.learning <= tuned.blocks:
            raise CaptionerError(f"--learning_blocks {learning}: the encoder has {tuned.blocks} tuned blocks")
        frozen = self.top[: tuned.blocks - self.learning]
        self.below, learning_top = below, self.top
        if len(frozen):  # their output cached beside the cache below them, named by their weights
            sha = module_sha256(frozen)
            folder = below.folder.with_name(f"{below.folder.name}_frozen{len(frozen)}_{sha[:10]}")
            self.below = derive_features(below, frozen, sha, device, folder=folder, log=log)
            learning_top = self.top[len(frozen):]
        self.source = TopBlocksFeatures(self.below, learning_top, device, amp)

    @property
    def description(self) -> str:
        """Which blocks learn, for the log."""
        if self.learning == self.tuned.blocks:
            return f"the encoder's last {self.tuned.blocks} blocks"
        return f"the last {self.learning} of the encoder's {self.tuned.blocks} tuned blocks"

    def parameters(self) -> list[nn.Parameter]:
        return self.source.parameters()

    def features(self, rows: list[int] | np.ndarray, use_grid: bool, *, flip: np.ndarray | None,
                 train: bool = True) -> torch.Tensor:
        """These images' features, with gradients into the blocks when `train`."""
        return self.source.features(rows, use_grid, flip=flip, train=train)

    def caption_features(self, rows: np.ndarray, use_grid: bool, *, flip: np.ndarray | None) -> torch.Tensor:
        """Features of the images of these captions, with gradients: the blocks run once per image, and all its
        captions see it as the flip of the first says."""
        images, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        features = self.features(images, use_grid, flip=flip[first] if flip is not None else None)
        return features[torch.as_tensor(inverse, device=features.device)]

    def settle(self, log: Callable[[str], None]) -> tuple[FeatureStore, TunedEncoder]:
        """The blocks as they are now: the cache of their output and what a checkpoint keeps of them."""
        sha = self.encoder.state_sha256()
        self.encoder.weights_sha256 = sha
        features = derive_features(self.below, self.source.top, sha, self.device, log=log)
        state = {name: value.detach().cpu().clone() for name, value in self.top.state_dict().items()}
        self.tuned = TunedEncoder(self.tuned.blocks, state, sha, self.tuned.base_sha256,
                                  os.path.abspath(features.folder), self.tuned.history)
        return features, self.tuned

    def restore(self, tuned: TunedEncoder, log: Callable[[str], None]) -> FeatureStore:
        """The blocks back as an earlier epoch left them (`tuned`), and the cache of their output (checked, and
        derived again where it is gone or unfinished)."""
        self.top.load_state_dict(tuned.state)
        self.encoder.weights_sha256 = tuned.weights_sha256
        kept = Path(tuned.cache_dir)
        features = derive_features(self.below, self.source.top, tuned.weights_sha256, self.device,
                                   folder=kept if kept.is_dir() else None, log=log)
        self.tuned = dataclasses.replace(tuned, cache_dir=os.path.abspath(features.folder))
        return features


def learning_blocks(config: TrainConfig, images: list[Path], tuned: TunedEncoder, device: torch.device,
                    log: Callable[[str], None] = say) -> LearningBlocks:
    """The tuned blocks as `tuned` holds them, over the cache of the grid below them (built if it is gone)."""
    weights = Path(config.encoder_weights) if config.encoder_weights else None
    encoder = tuned_encoder(config.encoder, weights, tuned.to_dict()).to(device)
    return LearningBlocks(encoder, tuned, cache_below(config, images, tuned.blocks), device, config.amp,
                          learning=config.learning_blocks, log=log)
