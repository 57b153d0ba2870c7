"""The tag scores: average precision as scikit-learn defines it (ties one step), precision and recall at 5."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.data.concepts import ConceptVocabulary
from captioner.evaluation.tags import average_precision, tag_scores


def test_average_precision() -> None:
    assert average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx((1 + 2 / 3) / 2)
    # tied scores: one threshold, precision 1/2 at recall 1
    assert average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_the_head_and_the_caption_words_scored_alike() -> None:
    concepts = ConceptVocabulary(["dog", "beach", "run", "ball"])
    references = [["a dog runs on the beach", "the dog is running", "a dog on a beach"]]
    probabilities = np.array([[0.9, 0.8, 0.1, 0.2]])
    scores = tag_scores(concepts, probabilities, references, ["a dog with a ball"])
    two = scores["present in >= 2 references"]  # dog (3), beach (2), run (2)
    assert two["head"]["P@5"] == pytest.approx(100 * 3 / 5) and two["head"]["R@5"] == pytest.approx(100.0)
    assert two["caption words"]["P@5"] == pytest.approx(100 * 1 / 5)  # "dog" right, "ball" wrong
    assert two["caption words"]["R@5"] == pytest.approx(100 / 3)
