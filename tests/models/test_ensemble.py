"""Averaging decoders: the mean of the members' word probabilities, through every decoding strategy."""

from __future__ import annotations

import pytest
import torch

from captioner.decoding.strategies import beam_search, greedy
from captioner.models.ensemble import Averaged
from tests.decoding.test_strategies import VOCAB, features, model


@pytest.mark.parametrize("kind", ["attention", "lstm", "transformer"])
def test_one_model_twice_decodes_as_the_model_alone(kind: str) -> None:
    net = model(kind)
    feats = features(net, batch=6)
    twice = Averaged([net, net]).eval()
    both_views = torch.stack([feats, feats], 1)
    alone = beam_search(net, feats, VOCAB, beam_size=3, max_length=12, length_penalty=1.0)
    averaged = beam_search(twice, both_views, VOCAB, beam_size=3, max_length=12, length_penalty=1.0)
    assert [a[0].tokens for a in averaged] == [a[0].tokens for a in alone]
    assert [a[0].log_prob for a in averaged] == pytest.approx([a[0].log_prob for a in alone], abs=1e-5)


@torch.no_grad()
def test_a_step_gives_the_log_of_the_members_mean_probabilities() -> None:
    first, second = model("attention", seed=0), model("attention", seed=3)
    feats, mirrored = features(first, batch=4, seed=1), features(first, batch=4, seed=2)
    pair = Averaged([first, second]).eval()
    tokens = torch.full((4,), VOCAB.start_id)
    logits, state, alpha = pair.step(tokens, pair.start(torch.stack([feats, mirrored], 1)))
    one, _, alpha_one = first.step(tokens, first.start(feats))
    two, _, _ = second.step(tokens, second.start(mirrored))
    expected = (one.softmax(-1) + two.softmax(-1)) / 2
    torch.testing.assert_close(logits.exp(), expected)
    torch.testing.assert_close(alpha, alpha_one)  # the first member's view: a mirrored one would not line up
    assert {key.split(".", 1)[0] for key in state} == {"0", "1"}


def test_averaged_members_decode_a_batch_as_each_image_alone() -> None:
    """Two different members decode a batch as they decode each image alone (beam search compacts the
    batch as images finish: the members' per-image entries must follow)."""
    pair = Averaged([model("attention", seed=0, sharp=1.0), model("attention", seed=5, sharp=1.0)]).eval()
    views = torch.stack([features(pair.members[0], batch=7, seed=1), features(pair.members[0], batch=7, seed=4)], 1)
    together = beam_search(pair, views, VOCAB, beam_size=3, max_length=10)
    one_by_one = [beam_search(pair, views[i:i + 1], VOCAB, beam_size=3, max_length=10)[0] for i in range(7)]
    assert [t[0].tokens for t in together] == [o[0].tokens for o in one_by_one]
    assert [g.tokens for g in greedy(pair, views, VOCAB, max_length=10)]  # greedy runs on it too


def test_views_must_match_the_members() -> None:
    net = model("attention")
    with pytest.raises(ValueError, match="2 members need 2 views"):
        Averaged([net, net]).start(features(net).unsqueeze(1))
    with pytest.raises(ValueError, match="all read the grid"):
        Averaged([net, model("lstm")])
