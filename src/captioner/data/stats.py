"""What is in a dataset: sizes, skipped items and why, vocabulary size, caption lengths."""

from __future__ import annotations

import numpy as np

from captioner.data.records import Dataset
from captioner.data.vocab import Vocabulary, clean_caption

PERCENTILES = (5, 25, 50, 75, 95, 100)


def dataset_stats(dataset: Dataset, freq_threshold: int = 5, max_vocab: int | None = None) -> dict:
    """The figures `captioner data stats` prints; the vocabulary counts the train split only, as training does."""
    train_tokens = [clean_caption(text) for record in dataset.split("train") for text in record.captions]
    vocab = Vocabulary.build(train_tokens, freq_threshold, max_vocab)
    lengths = np.array([len(clean_caption(text)) for record in dataset.records for text in record.captions] or [0])
    return {
        "dataset": dataset.name,
        "images": len(dataset.records),
        "captions": dataset.num_captions,
        "splits": dataset.split_sizes(),
        "skipped": dict(sorted(dataset.report.skipped.items())),
        "repaired": dict(sorted(dataset.report.repaired.items())),
        "notes": list(dataset.report.notes),
        "vocab_size": len(vocab),
        "freq_threshold": freq_threshold,
        "max_vocab": max_vocab,
        "caption_length_percentiles": {f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES},
    }


def format_stats(stats: dict, summary: str) -> str:
    splits = ", ".join(f"{name} {count}" for name, count in stats["splits"].items())
    lengths = ", ".join(f"{name} {value:g}" for name, value in stats["caption_length_percentiles"].items())
    limit = f", top {stats['max_vocab']}" if stats["max_vocab"] else ""
    return "\n".join([
        f"dataset      {stats['dataset']}",
        f"images       {stats['images']}",
        f"captions     {stats['captions']}",
        f"splits       {splits}",
        f"vocabulary   {stats['vocab_size']} words (train split, seen >= {stats['freq_threshold']} times{limit})",
        f"words/caption {lengths}",
        f"read report  {summary}",
    ])
