"""Training examples from the feature cache: one per (image, caption), in length-bucketed batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from captioner.data.records import ImageRecord
from captioner.data.vocab import Vocabulary, clean_caption
from captioner.features.cache import FeatureStore


@dataclass
class CaptionExamples:
    """Feature rows and encoded captions of one split; images the cache skipped are left out and counted."""

    rows: np.ndarray  # (N,) feature row of each example
    captions: list[list[int]]  # encoded, with <start> ... <end>
    missing_images: int

    @classmethod
    def build(cls, records: list[ImageRecord], store: FeatureStore, vocab: Vocabulary,
              max_length: int | None = None) -> CaptionExamples:
        rows, captions, missing = [], [], 0
        for record in records:
            row = store.row(record.image)
            if row is None:
                missing += 1
                continue
            for text in record.captions:
                tokens = clean_caption(text)[:max_length] if max_length else clean_caption(text)
                rows.append(row)
                captions.append(vocab.encode(tokens))
        return cls(np.asarray(rows, dtype=np.int64), captions, missing)

    def __len__(self) -> int:
        return len(self.captions)


def bucketed_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches of similar length (little compute on padding), in random order; the same for the same generator."""
    noise = torch.rand(len(lengths), generator=generator).numpy()
    order = np.lexsort((noise, np.asarray(lengths)))  # by length, ties in random order
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def make_batch(examples: CaptionExamples, indices: list[int], store: FeatureStore, use_grid: bool,
               flip_mask: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, L, C) or (B, C) as stored (float16: the decoder casts them once, faster than numpy would)
    and captions (B, T) padded with <pad>=0."""
    return store.features(examples.rows[indices], use_grid, flip_mask), pad_captions(examples, indices)


def pad_captions(examples: CaptionExamples, indices: list[int]) -> torch.Tensor:
    """Captions (B, T) padded with <pad>=0 to the longest of the batch."""
    longest = max(len(examples.captions[i]) for i in indices)
    captions = torch.zeros(len(indices), longest, dtype=torch.long)
    for position, index in enumerate(indices):
        caption = examples.captions[index]
        captions[position, :len(caption)] = torch.tensor(caption)
    return captions
