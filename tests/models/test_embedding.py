"""The text-image embedding: it learns which sentences go with which photos, and travels with the model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from captioner.cli.command import main
from captioner.models.checkpoint import load_checkpoint
from captioner.models.embedding import EmbeddingConfig, TextImageEmbedding
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
