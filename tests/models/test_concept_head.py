"""The concept head learns what the synthetic shapes show, their colours and shapes, from real pretrained
features: its three likeliest tags of a held-out image are nearly always right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from captioner.data.concepts import ConceptVocabulary
from captioner.data.formats import load_dataset
from captioner.data.shapes import generate_shapes
from captioner.data.vocab import clean_caption
from captioner.features.extract import extract_features
from captioner.models.concept_head import ConceptHead
from captioner.training.objectives import ConceptLoss, concept_targets


class WithHead(torch.nn.Module):
    def __init__(self, head: ConceptHead) -> None:
        super().__init__()
        self.head = head

    def concept_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def test_the_head_learns_the_colours_and_shapes(tmp_path: Path) -> None:
    data = generate_shapes(tmp_path / "shapes", num_images=400, seed=2)
    dataset = load_dataset("shapes", data)
    store = extract_features([r.image for r in dataset.records], "efficientnet_lite0", image_size=128,
                             cache_dir=tmp_path / "cache", progress=False)
    concepts = ConceptVocabulary.build([clean_caption(t) for r in dataset.split("train") for t in r.captions], 50)
    assert {"red", "blue", "circle", "square", "triangle", "large", "small"} <= set(concepts.concepts)
    targets = concept_targets(dataset.records, store, concepts, clean_caption)
    torch.manual_seed(0)
    model = WithHead(ConceptHead(1280, len(concepts), hidden_size=256, dropout=0.1))
    loss_fn = ConceptLoss(targets)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rows = np.array([store.row(r.image) for r in dataset.split("train")])
    for step in range(300):
        batch = rows[torch.randint(len(rows), (64,)).numpy()]
        loss = loss_fn(model, store.features(batch, use_grid=True), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test = dataset.split("test")
    test_rows = [store.row(r.image) for r in test]
    with torch.no_grad():
        probabilities = torch.sigmoid(model.concept_logits(store.features(test_rows, use_grid=True)))
    top3 = probabilities.topk(3, dim=1).indices
    truth = targets[test_rows] >= 0.4  # named by at least 2 of the 5 references
    precision = float(truth.gather(1, top3).float().mean())
    assert precision >= 0.9, precision
