from __future__ import annotations

import contextlib
import io

import pytest

from captioner.training.bleu_reward import SentenceBleu

REFERENCES = {
    "a": [["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "is", "running"], ["the", "dog", "runs"]],
    "b": [["two", "men", "talk", "on", "a", "street"], ["two", "people", "talking"], ["men", "chat", "outside"]],
    "c": [["a", "child", "jumps", "into", "a", "pool"], ["a", "kid", "jumps", "in", "the", "water"]],
    "d": [["a", "man", "rides", "a", "bike", "down", "a", "hill"], ["a", "cyclist", "on", "a", "hill"]],
}


def test_sentence_bleu_equals_the_coco_caption_per_image_scores() -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    candidates = {  # an exact match, a short one (brevity penalty), a wrong one, repeated words (clipping)
        "a": ["a", "brown", "dog", "is", "running"], "b": ["two", "men", "talk"],
        "c": ["a", "dog"], "d": ["a", "a", "a", "man", "rides", "a", "bike", "on", "a", "hill"],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        _, theirs = Bleu(4).compute_score({k: [" ".join(w) for w in v] for k, v in REFERENCES.items()},
                                          {k: [" ".join(v)] for k, v in candidates.items()})
    ours = SentenceBleu(REFERENCES)
    for key, expected in zip(candidates, theirs[3]):
        assert ours.score(key, candidates[key]) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)
    assert ours.score("a", candidates["a"]) == pytest.approx(1.0)
    assert ours.score("c", candidates["c"]) < 1e-3


def test_an_empty_caption_scores_zero() -> None:
    assert SentenceBleu(REFERENCES).score("a", []) == pytest.approx(0.0, abs=1e-9)
