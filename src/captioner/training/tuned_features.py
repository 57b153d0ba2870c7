"""The features of a run whose encoder's last blocks are tuned (--tune_encoder_epochs): the cache of the grid
below those blocks, the tuning (training/encoder_tuning.py), then the tuned encoder's own cache, made from the
first one (features/derive.py). A run going on from a tuned checkpoint rebuilds its encoder from the checkpoint
and finds (or rebuilds) that cache instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from captioner.data.concepts import ConceptVocabulary
from captioner.data.records import Dataset
from captioner.data.vocab import clean_caption
from captioner.errors import CaptionerError
from captioner.features.derive import derive_features
from captioner.features.encoders import create_encoder
from captioner.features.extract import extract_features
from captioner.features.store import FeatureStore
from captioner.models.loading import tuned_encoder
from captioner.training.config import TrainConfig
from captioner.training.encoder_tuning import TunedEncoder, tune_encoder
from captioner.training.objectives import concept_targets
from captioner.training.tuning_cache import load_tuning, save_tuning, tuning_file, tuning_key


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def tuned_features(config: TrainConfig, dataset: Dataset, images: list[Path], concepts: ConceptVocabulary | None,
                   device: torch.device) -> tuple[FeatureStore, TunedEncoder]:
    """Tune the encoder's last --tune_encoder_blocks blocks on the cache below them; its features and what the
    checkpoint keeps of it."""
    if concepts is None:
        raise CaptionerError("--tune_encoder_epochs tunes the encoder to tell the captions' concepts; "
                             "--num_concepts 0 leaves none")
    weights = Path(config.encoder_weights) if config.encoder_weights else None
    blocks = config.tune_encoder_blocks
    below = cache_below(config, images, blocks)
    encoder = create_encoder(config.encoder, weights).to(device)
    base = encoder.weights_sha256
    records = [r for r in dataset.records if r.split in ("train", "dev")]
    targets = concept_targets(records, below, concepts, clean_caption)
    rows = {split: np.unique([row for r in dataset.split(split) if (row := below.row(r.image)) is not None])
            for split in ("train", "dev")}
    settings = {"base": base, "blocks": blocks, "epochs": config.tune_encoder_epochs, "lr": config.tune_encoder_lr,
                "flip": config.augment_flip, "seed": config.seed, "amp": config.amp, "device": device.type}
    key = tuning_key(below, targets, rows, settings)
    kept = tuning_file(below, key)
    saved = load_tuning(kept, key)
    if saved is not None:
        state, history = saved
        encoder.split(blocks)[1].load_state_dict(state)
        encoder.tuned_blocks = blocks
        say(f"the last {blocks} blocks of {config.encoder} as tuned by an earlier run with the same settings "
            f"({kept})")
    else:
        say(f"tuning the last {blocks} blocks of {config.encoder} to tell the captions' {len(concepts)} concepts, "
            f"{config.tune_encoder_epochs} epochs on {len(rows['train'])} images")
        history = tune_encoder(encoder, blocks, below, targets, rows["train"], rows["dev"],
                               config.tune_encoder_epochs, config.tune_encoder_lr, flip=config.augment_flip,
                               seed=config.seed, device=device, amp=config.amp, log=say)
    top = encoder.split(blocks)[1]
    state = {k: v.detach().cpu().clone() for k, v in top.state_dict().items()}
    if saved is None:
        save_tuning(kept, key, state, history)
    sha = encoder.state_sha256()
    encoder.weights_sha256 = sha
    features = derive_features(below, top, sha, device, log=say)
    return features, TunedEncoder(blocks, state, sha, base, os.path.abspath(features.folder), history)


def cache_below(config: TrainConfig, images: list[Path], blocks: int) -> FeatureStore:
    """The cache of the grid below the encoder's last `blocks` blocks (built, or found where it was built)."""
    return extract_features(images, config.encoder, image_size=config.image_size,
                            cache_dir=Path(config.cache_dir) if config.cache_dir else None, flip=config.augment_flip,
                            weights=Path(config.encoder_weights) if config.encoder_weights else None,
                            num_workers=config.num_workers, device=config.device, below_blocks=blocks)


def features_of_tuned_checkpoint(config: TrainConfig, images: list[Path], saved: dict,
                                 device: torch.device) -> tuple[FeatureStore, TunedEncoder]:
    """A run going on from a tuned checkpoint: its encoder's cache, found where the tuning wrote it, else built
    from the images with the tuned encoder."""
    encoder = tuned_encoder(config.encoder, Path(config.encoder_weights) if config.encoder_weights else None, saved)
    folder = Path(saved["cache_dir"]) if Path(saved["cache_dir"]).is_dir() else None
    features = extract_features(images, config.encoder, image_size=config.image_size, cache_dir=folder,
                                flip=config.augment_flip, num_workers=config.num_workers, device=config.device,
                                encoder=encoder.to(device))
    return features, TunedEncoder.from_dict({**saved, "cache_dir": os.path.abspath(features.folder)})
