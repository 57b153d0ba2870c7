"""Decoding strategies on small random decoders: exact properties, not captions."""

from __future__ import annotations

import itertools

import pytest
import torch

from captioner.data.vocab import Vocabulary
from captioner.models.decoders import DecoderConfig, build_decoder
from captioner.decoding.strategies import beam_search, decode, greedy, sample, word_log_probs
from captioner.decoding.settings import DecodeSettings

VOCAB = Vocabulary.build([["a", "b", "c", "d", "e", "f"]] * 2, freq_threshold=1)


def model(decoder: str = "attention", seed: int = 0, sharp: float = 3.0):
    torch.manual_seed(seed)
    net = build_decoder(DecoderConfig(decoder, vocab_size=len(VOCAB), feature_dim=8, embed_size=6, hidden_size=12,
                                      attention_dim=5, drop_prob=0.0, num_heads=2)).eval()
    with torch.no_grad():
        net.output.weight.mul_(sharp)  # peakier distributions, so captions end within the limit
    return net


def features(decoder, batch: int = 5, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 4, 8) if decoder.uses_grid else (batch, 8)
    return torch.randn(shape, generator=generator)


@pytest.mark.parametrize("kind", ["attention", "lstm", "gru", "transformer"])
def test_beam_of_one_is_greedy(kind: str) -> None:
    net = model(kind)
    feats = features(net, batch=8)
    expected = greedy(net, feats, VOCAB, max_length=12)
    got = beam_search(net, feats, VOCAB, beam_size=1, max_length=12)
    assert [g[0].tokens for g in got] == [e.tokens for e in expected]
    for g, e in zip(got, expected):
        assert g[0].log_prob == pytest.approx(e.log_prob, abs=1e-5)
        if e.attention is not None:
            torch.testing.assert_close(g[0].attention, e.attention)


@torch.no_grad()
def sequence_log_prob(net, feats: torch.Tensor, words: list[int], ended: bool) -> float:
    state = net.start(feats.unsqueeze(0))
    tokens, total = torch.tensor([VOCAB.start_id]), 0.0
    for word in words + ([VOCAB.end_id] if ended else []):
        logits, state, _ = net.step(tokens, state)
        total += float(word_log_probs(logits, VOCAB)[0, word])
        tokens = torch.tensor([word])
    return total


def test_a_wide_beam_finds_the_most_likely_caption() -> None:
    """With room for every hypothesis, beam search is exhaustive search: compare with enumeration."""
    net = model(seed=3, sharp=1.0)
    feats = features(net, batch=3, seed=2)
    words = [i for i in range(len(VOCAB)) if i not in (VOCAB.pad_id, VOCAB.start_id, VOCAB.end_id)]
    got = beam_search(net, feats, VOCAB, beam_size=len(words) ** 2 + 1, max_length=3)
    for image in range(3):
        candidates = [(list(seq), True) for n in range(3) for seq in itertools.product(words, repeat=n)]
        best = max(sequence_log_prob(net, feats[image], seq, ended) for seq, ended in candidates)
        assert got[image][0].log_prob == pytest.approx(best, abs=1e-4)


def test_captions_that_never_end_return_the_best_unfinished_beam() -> None:
    net = model()
    with torch.no_grad():
        net.output.bias[VOCAB.end_id] = -1e4  # <end> never wins
    results = beam_search(net, features(net), VOCAB, beam_size=3, max_length=7, num_captions=2)
    for per_image in results:
        assert len(per_image) == 2
        assert all(len(d.tokens) == 7 for d in per_image)
        assert per_image[0].log_prob >= per_image[1].log_prob


def test_beams_are_ranked_and_distinct() -> None:
    net = model()
    results = beam_search(net, features(net), VOCAB, beam_size=4, max_length=10, num_captions=4)
    for per_image in results:
        scores = [d.score for d in per_image]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(d.tokens) for d in per_image}) == len(per_image)


def test_no_repeat_ngram_forbids_repeats() -> None:
    net = model(sharp=0.2)  # flat distributions repeat words freely
    with torch.no_grad():
        net.output.bias[VOCAB.end_id] = -1e4
    for n in (1, 2):
        for per_image in beam_search(net, features(net), VOCAB, beam_size=3, max_length=6, no_repeat_ngram=n):
            tokens = per_image[0].tokens
            grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
            assert len(grams) == len(set(grams)), tokens


def test_sampling_gives_distinct_captions_and_repeats_with_a_seed() -> None:
    net = model(sharp=0.5)
    feats = features(net, batch=3)
    first = sample(net, feats, VOCAB, num_captions=3, max_length=8, seed=7)
    again = sample(net, feats, VOCAB, num_captions=3, max_length=8, seed=7)
    assert [[d.tokens for d in image] for image in first] == [[d.tokens for d in image] for image in again]
    for per_image in first:
        assert len(per_image) == 3 and len({tuple(d.tokens) for d in per_image}) == 3


def test_sampling_with_top_k_one_is_greedy() -> None:
    net = model()
    feats = features(net)
    sampled = sample(net, feats, VOCAB, max_length=10, top_k=1, seed=0)
    assert [s[0].tokens for s in sampled] == [g.tokens for g in greedy(net, feats, VOCAB, max_length=10)]
    nucleus = sample(net, feats, VOCAB, max_length=10, top_p=1e-6, seed=0)  # only the single most likely word
    assert [s[0].tokens for s in nucleus] == [g.tokens for g in greedy(net, feats, VOCAB, max_length=10)]


def test_decode_dispatches_and_checks_settings() -> None:
    net = model("lstm")
    feats = features(net)
    assert len(decode(net, feats, VOCAB, DecodeSettings(strategy="beam", beam_size=2, num_captions=2))[0]) == 2
    assert len(decode(net, feats, VOCAB, DecodeSettings(strategy="greedy"))) == 5
    with pytest.raises(ValueError, match="needs beam_size"):
        DecodeSettings(strategy="beam", beam_size=2, num_captions=3)
    with pytest.raises(ValueError, match="strategy 'nucleus': must be one of greedy, beam, sample"):
        DecodeSettings(strategy="nucleus")


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_pad_start_and_unk_are_never_emitted(strategy: str) -> None:
    """Even when the model prefers them: a trained model does write <unk> (6% of one's test captions did)."""
    net = model()
    never = (VOCAB.pad_id, VOCAB.start_id, VOCAB.unk_id)
    with torch.no_grad():
        for word in never:
            net.output.bias[word] = 1e4
    settings = DecodeSettings(strategy, beam_size=3, max_length=6, seed=0)
    for per_image in decode(net, features(net), VOCAB, settings):
        assert not set(per_image[0].tokens) & set(never)
    logits = torch.zeros(1, len(VOCAB))
    assert torch.isfinite(word_log_probs(logits, VOCAB, allow_unknown=True)[0, VOCAB.unk_id])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_of_a_batch_equals_one_image_at_a_time(length_penalty: float) -> None:
    """Images that finish leave the batch early; what remains must decode as if it were alone."""
    net = model(seed=3, sharp=6.0)
    feats = features(net, batch=9, seed=5)
    together = beam_search(net, feats, VOCAB, beam_size=3, max_length=9, length_penalty=length_penalty,
                           num_captions=2)
    assert len({len(per_image[0].tokens) for per_image in together}) > 1  # images finish at different steps
    for image in range(9):
        alone = beam_search(net, feats[image:image + 1], VOCAB, beam_size=3, max_length=9,
                            length_penalty=length_penalty, num_captions=2)[0]
        assert [d.tokens for d in together[image]] == [d.tokens for d in alone]
        for got, want in zip(together[image], alone):
            assert got.log_prob == pytest.approx(want.log_prob, abs=1e-5)
            torch.testing.assert_close(got.attention, want.attention)


def test_greedy_of_a_batch_equals_one_image_at_a_time() -> None:
    net = model(seed=3, sharp=6.0)
    feats = features(net, batch=9, seed=5)
    together = greedy(net, feats, VOCAB, max_length=9)
    assert len({len(decoded.tokens) for decoded in together}) > 1
    for image in range(9):
        (alone,) = greedy(net, feats[image:image + 1], VOCAB, max_length=9)
        assert together[image].tokens == alone.tokens
        assert together[image].log_prob == pytest.approx(alone.log_prob, abs=1e-5)
        torch.testing.assert_close(together[image].attention, alone.attention)


def test_flip_average_decodes_with_both_views_and_checks_them() -> None:
    from captioner.models.ensemble import Averaged

    net = model("attention")
    plain, mirrored = features(net, batch=4, seed=1), features(net, batch=4, seed=2)
    views = torch.stack([plain, mirrored], 1)
    settings = DecodeSettings("beam", 3, length_penalty=1.0, flip_average=True)
    got = decode(net, views, VOCAB, settings)
    expected = beam_search(Averaged([net, net]), views, VOCAB, beam_size=3, length_penalty=1.0)
    assert [g[0].tokens for g in got] == [e[0].tokens for e in expected]
    with pytest.raises(ValueError, match="flip_average needs features"):
        decode(net, plain, VOCAB, settings)
