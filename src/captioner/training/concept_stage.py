"""A short stage that trains the concept head alone before the captions (--concept_epochs), so that a decoder
reading the concepts (--use_concepts) reads useful ones from its first step instead of a head's first guesses.

The head is small and reads the cached features, so an epoch over the training images takes seconds. It has an
optimizer of its own and draws its batches from a generator of its own: the captions' training that follows
draws the random numbers it would draw without this stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from captioner.devices import autocast
from captioner.features.source import FeatureSource
from captioner.models.decoder import Decoder
from captioner.training.objectives import ConceptLoss

IMAGES_PER_BATCH = 64
EVALUATED_AT_ONCE = 256


def train_concept_head(decoder: Decoder, features: FeatureSource, loss: ConceptLoss, train_rows: np.ndarray,
                       dev_rows: np.ndarray, epochs: int, learning_rate: float, *, flip: bool, seed: int,
                       device: torch.device, amp: bool, log: Callable[[str], None]) -> list[dict]:
    """Train decoder.concept_head for `epochs` over the training images; one history entry per epoch."""
    head = decoder.concept_head
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed * 7919 + 1)
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        head.train()
        order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        total = 0.0
        for start in range(0, len(order), IMAGES_PER_BATCH):
            rows = order[start:start + IMAGES_PER_BATCH]
            mirrored = (torch.rand(len(rows), generator=generator) < 0.5).numpy() if flip else None
            batch = features.features(rows, decoder.uses_grid, flip=mirrored, train=True).to(device)
            with autocast(device, amp):
                value = loss(decoder, batch, rows)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            total += float(value.detach()) * len(rows)
        entry = {"epoch": epoch, "train_loss": total / len(order),
                 "dev_loss": dev_loss(decoder, features, loss, dev_rows, device, amp),
                 "seconds": time.perf_counter() - started}
        history.append(entry)
        log(f"Concept head epoch {epoch}/{epochs}: train {entry['train_loss']:.4f} | dev {entry['dev_loss']:.4f} | "
            f"{entry['seconds']:.0f} s")
    return history


@torch.no_grad()
def dev_loss(decoder: Decoder, features: FeatureSource, loss: ConceptLoss, rows: np.ndarray, device: torch.device,
             amp: bool) -> float:
    decoder.concept_head.eval()
    total = 0.0
    for start in range(0, len(rows), EVALUATED_AT_ONCE):
        part = rows[start:start + EVALUATED_AT_ONCE]
        with autocast(device, amp):
            total += float(loss(decoder, features.features(part, decoder.uses_grid).to(device), part)) * len(part)
    return total / max(len(rows), 1)
