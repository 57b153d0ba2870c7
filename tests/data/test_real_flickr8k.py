"""The real Flickr8k copy in ../shared (skipped when absent)."""

from __future__ import annotations

from captioner.data.formats import load_dataset
from captioner.data.stats import dataset_stats
from tests.conftest import REAL_FLICKR8K, needs_real_flickr8k


@needs_real_flickr8k
def test_official_flickr8k_counts() -> None:
    dataset = load_dataset("flickr8k", REAL_FLICKR8K)
    stats = dataset_stats(dataset)
    assert stats["images"] == 8091
    assert stats["captions"] == 40455
    assert stats["splits"] == {"train": 6000, "dev": 1000, "test": 1000, "unsplit": 91}
    assert stats["skipped"] == {"caption ids without an image": 1}
    assert "2258277193_586949ec62.jpg.1" in dataset.report.summary()
