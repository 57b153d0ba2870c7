from __future__ import annotations

import contextlib
import io

import pytest
import torch

from captioner.data.vocab import Vocabulary
from captioner.models.decoders import DecoderConfig, build_decoder
from captioner.training.cider_reward import CiderD
from captioner.training.self_critical import SelfCritical, draw

REFERENCES = {
    "a": [["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "is", "running"], ["the", "dog", "runs"]],
    "b": [["two", "men", "talk", "on", "a", "street"], ["two", "people", "talking"], ["men", "chat", "outside"]],
    "c": [["a", "child", "jumps", "into", "a", "pool"], ["a", "kid", "jumps", "in", "the", "water"]],
}


def test_cider_d_equals_the_coco_caption_scorer() -> None:
    from pycocoevalcap.cider.cider import Cider

    candidates = {"a": ["a", "dog", "runs", "on", "grass"], "b": ["two", "men", "talk"], "c": ["a", "dog"]}
    ours = CiderD(REFERENCES)
    with contextlib.redirect_stdout(io.StringIO()):
        _, theirs = Cider().compute_score({k: [" ".join(w) for w in v] for k, v in REFERENCES.items()},
                                          {k: [" ".join(v)] for k, v in candidates.items()})
    for key, expected in zip(candidates, theirs):
        assert ours.score(key, candidates[key]) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)


def test_the_loss_favours_samples_that_beat_their_siblings() -> None:
    vocab = Vocabulary.build([w for refs in REFERENCES.values() for w in refs], freq_threshold=1)
    torch.manual_seed(0)
    decoder = build_decoder(DecoderConfig("attention", len(vocab), 8, 8, 12, 6, drop_prob=0.0))
    rows = {0: REFERENCES["a"], 1: REFERENCES["b"], 2: REFERENCES["c"]}
    critic = SelfCritical(rows, vocab, samples=4)
    loss, reward = critic.loss(decoder, torch.randn(3, 5, 8), [0, 1, 2], max_length=8)
    assert loss.requires_grad and reward >= 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
    generator = torch.Generator().manual_seed(1)
    assert sorted(row for batch in critic.batches(2, generator) for row in batch) == [0, 1, 2]


def test_a_bleu_weight_adds_the_weighted_bleu_4_to_the_reward() -> None:
    from captioner.training.bleu_reward import SentenceBleu

    vocab = Vocabulary.build([w for refs in REFERENCES.values() for w in refs], freq_threshold=1)
    rows = {0: REFERENCES["a"], 1: REFERENCES["b"]}
    plain, mixed = SelfCritical(rows, vocab), SelfCritical(rows, vocab, bleu_weight=2.0)
    words = ["a", "dog", "runs", "on", "grass"]
    bleu = SentenceBleu(rows).score(0, words)
    assert bleu > 0.1
    assert plain.reward(0, words) == pytest.approx(CiderD(rows).score(0, words))
    assert mixed.reward(0, words) == pytest.approx(plain.reward(0, words) + 2.0 * bleu)


@pytest.mark.parametrize("kind", ["attention", "lstm", "transformer"])
def test_samples_come_from_the_model_without_dropout(kind: str) -> None:
    """The policy is the model as it decodes: a decoder in training mode samples and scores exactly as in eval
    mode (show-and-tell's start() dropped out parts of the image before), and stays in training mode."""
    vocab = Vocabulary.build([w for refs in REFERENCES.values() for w in refs], freq_threshold=1)
    torch.manual_seed(0)
    decoder = build_decoder(DecoderConfig(kind, len(vocab), 8, 8, 12, 6, drop_prob=0.5, num_heads=2))
    critic = SelfCritical({0: REFERENCES["a"], 1: REFERENCES["b"]}, vocab, samples=3)
    features = torch.randn(2, 5, 8) if decoder.uses_grid else torch.randn(2, 8)
    results = []
    for training in (True, False):
        decoder.train(training)
        torch.manual_seed(1)
        loss, reward = critic.loss(decoder, features, [0, 1], max_length=7)
        assert decoder.training == training
        results.append((loss.item(), reward))
    assert results[0] == results[1]


def test_draw_follows_the_probabilities_and_never_picks_an_impossible_word() -> None:
    torch.manual_seed(0)
    probabilities = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0]).repeat(40_000, 1)
    counts = torch.bincount(draw(probabilities), minlength=6).float() / 40_000
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts, probabilities[0], atol=0.01)
