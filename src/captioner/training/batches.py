"""Training examples from the feature cache: one per (image, caption), in length-bucketed batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from captioner.data.records import Dataset, ImageRecord
from captioner.data.vocab import Vocabulary, clean_caption
from captioner.errors import CaptionerError
from captioner.features.source import FeatureSource


@dataclass
class CaptionExamples:
    """Feature rows and encoded captions of one split; images the cache skipped are left out and counted."""

    rows: np.ndarray  # (N,) feature row of each example
    captions: list[list[int]]  # encoded, with <start> ... <end>
    missing_images: int
    words: list[list[str]] | None = None  # the cleaned captions themselves, unknown words and all

    @classmethod
    def build(cls, records: list[ImageRecord], store: FeatureSource, vocab: Vocabulary,
              max_length: int | None = None) -> CaptionExamples:
        rows, captions, words, missing = [], [], [], 0
        for record in records:
            row = store.row(record.image)
            if row is None:
                missing += 1
                continue
            for text in record.captions:
                tokens = clean_caption(text)[:max_length] if max_length else clean_caption(text)
                rows.append(row)
                captions.append(vocab.encode(tokens))
                words.append(tokens)
        return cls(np.asarray(rows, dtype=np.int64), captions, missing, words)

    def __len__(self) -> int:
        return len(self.captions)


def bucketed_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches of similar length (little compute on padding), in random order; the same for the same generator."""
    noise = torch.rand(len(lengths), generator=generator).numpy()
    order = np.lexsort((noise, np.asarray(lengths)))  # by length, ties in random order
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def image_batches(rows: np.ndarray, lengths: list[int], batch_size: int,
                  generator: torch.Generator) -> list[list[int]]:
    """Batches that hold all the captions of their images (as many images as fit in `batch_size` captions; an
    image with more captions makes a batch of its own), images with similar longest captions together, in random
    order; the same for the same generator.

    For epochs where the encoder's blocks learn: they run once per image of a batch instead of once per caption.
    """
    images, inverse = np.unique(rows, return_inverse=True)
    longest = np.zeros(len(images), dtype=np.int64)
    np.maximum.at(longest, inverse, np.asarray(lengths))
    noise = torch.rand(len(images), generator=generator).numpy()
    captions_of = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    batches: list[list[int]] = []
    for image in np.lexsort((noise, longest)):  # by longest caption, ties in random order
        captions = captions_of[image].tolist()
        if batches and len(batches[-1]) + len(captions) <= batch_size:
            batches[-1].extend(captions)
        else:
            batches.append(captions)
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def image_shares(rows: np.ndarray, world_size: int) -> list[list[int]]:
    """Each process's positions in a batch of captions (`rows`: their images): whole images, dealt round-robin, so
    that an image's captions go to one process, which runs the blocks once for them."""
    _, image_of = np.unique(rows, return_inverse=True)
    return [np.flatnonzero(image_of % world_size == rank).tolist() for rank in range(world_size)]


def one_view_per_image(rows: np.ndarray, flip: np.ndarray | None) -> np.ndarray | None:
    """The mirror choice of each image's first caption, for all its captions."""
    if flip is None:
        return None
    _, first, image_of = np.unique(rows, return_index=True, return_inverse=True)
    return flip[first][image_of]


def pad_captions(examples: CaptionExamples, indices: list[int]) -> torch.Tensor:
    """Captions (B, T) padded with <pad>=0 to the longest of the batch."""
    longest = max(len(examples.captions[i]) for i in indices)
    captions = torch.zeros(len(indices), longest, dtype=torch.long)
    for position, index in enumerate(indices):
        caption = examples.captions[index]
        captions[position, :len(caption)] = torch.tensor(caption)
    return captions


@dataclass
class TrainingData:
    """What a run trains and validates on: the dataset, its train and dev examples (images the encoder could not
    read left out), and the dev images scored each epoch."""

    dataset: Dataset
    train: CaptionExamples
    dev: CaptionExamples
    dev_records: list[ImageRecord]

    @classmethod
    def build(cls, dataset: Dataset, features: FeatureSource, vocab: Vocabulary, max_length: int) -> TrainingData:
        dev_records = [record for record in dataset.split("dev") if features.row(record.image) is not None]
        data = cls(dataset, CaptionExamples.build(dataset.split("train"), features, vocab, max_length),
                   CaptionExamples.build(dev_records, features, vocab, max_length), dev_records)
        if len(data.train) == 0 or len(data.dev) == 0:
            raise CaptionerError(f"{dataset.name}: the train and dev splits need usable captions "
                                 f"(train {len(data.train)}, dev {len(data.dev)})")
        return data
