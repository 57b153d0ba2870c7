"""The text-image embedding: it learns which sentences go with which photos, and travels with the model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from captioner.cli.command import main
from captioner.data.vocab import Vocabulary
from captioner.models.checkpoint import load_checkpoint
from captioner.models.embedding import (
    EmbeddingConfig,
    EmbeddingEnsemble,
    TextImageEmbedding,
    build_embedding,
    sentence_config,
)
from captioner.models.loading import load_model


def test_contrastive_training_pairs_held_out_photos_with_their_sentences() -> None:
    """Eight kinds of photo (a feature direction each, plus noise), each described by its own two words."""
    torch.manual_seed(0)
    kinds, dim = 8, 24
    directions = torch.randn(kinds, dim)

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kind = torch.randperm(kinds)[:count] if count <= kinds else torch.randint(0, kinds, (count,))
        features = directions[kind].unsqueeze(1) + 0.3 * torch.randn(count, 4, dim)  # a grid of 4 regions
        words = torch.stack([4 + 2 * kind, 5 + 2 * kind], 1)
        return features, words, kind

    model = TextImageEmbedding(EmbeddingConfig(feature_dim=dim, vocab_size=4 + 2 * kinds, word_dim=16, dim=32))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        features, words, _ = draw(kinds)  # distinct kinds in a batch: no photo is its own negative
        loss = model.contrastive_loss(features, words)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    features, words, kind = draw(kinds)
    with torch.no_grad():
        similarity = model.embed_texts(words) @ model.embed_images(features).T
    assert (similarity.argmax(1) == torch.arange(kinds)).all()
    assert torch.allclose(model.embed_images(features[:, 0]).norm(dim=1), torch.ones(kinds))  # pooled input too


SCENES = ["a black dog runs across a green field", "a man rides a bicycle down a busy street",
          "children splash in a swimming pool", "a snowboarder jumps off a snowy ramp",
          "a woman sings on a stage with a microphone", "a boat sails on a calm lake"]
PARAPHRASES = ["a dark puppy sprinting over the grass", "a cyclist pedals through city traffic",
               "kids playing in the water of a pool", "someone on a snowboard flies over a jump in the snow",
               "a female singer performs into a mic", "a small ship on still water"]


def test_a_sentence_reading_embedding_finds_photos_by_words_it_never_trained_on() -> None:
    """Six kinds of photo, each trained with one sentence, found by a paraphrase that shares almost none of its
    words: what the pretrained sentence encoder brings."""
    torch.manual_seed(0)
    kinds, dim = len(SCENES), 24
    directions = torch.randn(kinds, dim)
    model = TextImageEmbedding(sentence_config(feature_dim=dim, vocab_size=4, word_dim=16, dim=32))
    trained = model.text_inputs([sentence.split() for sentence in SCENES], None)
    asked = model.text_inputs([sentence.split() for sentence in PARAPHRASES], None)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        features = directions.unsqueeze(1) + 0.3 * torch.randn(kinds, 4, dim)
        loss = model.contrastive_loss(features, trained)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        photos = model.embed_images(directions.unsqueeze(1) + 0.3 * torch.randn(kinds, 4, dim))
        similarity = model.embed_text_input(asked) @ photos.T
    assert (similarity.argmax(1) == torch.arange(kinds)).all()


def test_a_word_reading_embedding_reads_the_vocabulary_ids() -> None:
    vocab = Vocabulary.build([["a", "red", "circle"], ["a", "blue", "square"]], freq_threshold=1)
    model = TextImageEmbedding(EmbeddingConfig(feature_dim=8, vocab_size=len(vocab), word_dim=8, dim=8))
    tokens = model.text_inputs([["a", "red", "circle"], ["blue"], []], vocab)
    assert tokens.tolist() == [vocab.encode(["a", "red", "circle"])[1:-1], [vocab.stoi["blue"], 0, 0], [0, 0, 0]]


def test_an_ensemble_scores_a_pair_by_its_members_mean_cosine() -> None:
    """Its vectors are unit vectors side by side, so a library stores and searches them like one embedding's."""
    torch.manual_seed(0)
    config = EmbeddingConfig(feature_dim=8, vocab_size=12, word_dim=8, dim=6, members=3)
    ensemble = build_embedding(config).eval()
    assert isinstance(ensemble, EmbeddingEnsemble) and ensemble.vector_dim == 18
    features, words = torch.randn(4, 5, 8), torch.tensor([[4, 5, 6], [7, 0, 0], [8, 9, 0], [10, 11, 4]])
    with torch.no_grad():
        photos, texts = ensemble.embed_images(features), ensemble.embed_text_input(words)
        members = [(m.embed_text_input(words) @ m.embed_images(features).T) for m in ensemble.members]
        assert torch.allclose(photos.norm(dim=1), torch.ones(4)) and photos.shape == (4, 18)
        assert torch.allclose(texts @ photos.T, sum(members) / 3, atol=1e-6)
        reloaded = build_embedding(config, ensemble.state_dict()).eval()
        assert torch.equal(reloaded.embed_images(features), photos)
    single = build_embedding(EmbeddingConfig(feature_dim=8, vocab_size=12, word_dim=8, dim=6))
    assert isinstance(single, TextImageEmbedding) and "image.0.weight" in single.state_dict()  # today's names


def test_the_trained_embedding_is_kept_in_the_checkpoint_and_the_bundle(tiny_checkpoint: Path, tmp_path: Path) -> None:
    saved = load_checkpoint(tiny_checkpoint)["embedding"]
    assert len(saved["history"]) == 3 and {"R@1", "R@5", "R@10"} <= set(saved["history"][0])
    model = load_model(tiny_checkpoint, "cpu")
    assert model.embedding is not None and not model.embedding.training
    bundle = tmp_path / "bundle"
    assert main(["export", "--model_path", str(tiny_checkpoint), "--output", str(bundle)]) == 0
    assert json.loads((bundle / "config.json").read_text())["embedding"]["dim"] == model.embedding.config.dim
    exported = load_model(bundle, "cpu").embedding
    words = torch.tensor([[4, 5, 6], [7, 8, 0]])
    features = torch.randn(2, 16, model.embedding.config.feature_dim)
    with torch.no_grad():
        assert torch.equal(exported.embed_texts(words), model.embedding.embed_texts(words))
        assert torch.equal(exported.embed_images(features), model.embedding.embed_images(features))


def test_models_trained_without_one_load_without_it(tiny_transformer_checkpoint: Path) -> None:
    assert load_model(tiny_transformer_checkpoint, "cpu").embedding is None
