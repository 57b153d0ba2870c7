"""How a decoder reads the concepts its head predicts (--use_concepts): the ways tried on dev.

    project  the probability vector (B, K) projected to one vector (a learned mix of concept embeddings, as in
             LSTM-A: Yao et al. 2017), added to the initial state and to every step's input
    attend   the top-k concepts as embeddings scaled by their probability: a small memory that each step attends
             to beside the image (semantic attention: You et al. 2016)

The probabilities are the head's own predictions, detached: training then sees what decoding sees, and the head
learns from its own loss only, so its tags stay what the tag scores measure.
"""

from __future__ import annotations

import math

import torch
from torch import nn

CONCEPT_INPUTS = ("project", "attend")


def concept_probabilities(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """P(concept | image) (B, K) as the decoder reads them: no gradient into the head."""
    with torch.no_grad():
        return torch.sigmoid(head(features))


class ConceptVector(nn.Module):
    """The probability vector as one vector of `size`."""

    def __init__(self, num_concepts: int, size: int) -> None:
        super().__init__()
        self.project = nn.Linear(num_concepts, size)

    def forward(self, probabilities: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.project(probabilities.to(dtype))


class ConceptMemory(nn.Module):
    """The image's `top_k` likeliest concepts: their embeddings (keys) and the embeddings scaled by the
    probability (values), so that a concept the head doubts says little even when attended to."""

    def __init__(self, num_concepts: int, size: int, top_k: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_concepts, size)
        self.top_k = min(top_k, num_concepts)

    def forward(self, probabilities: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, K) -> (B, k, 2, size): keys and values of each image's memory."""
        top = probabilities.topk(self.top_k, dim=1)
        keys = self.embed(top.indices).to(dtype)
        values = keys * top.values.unsqueeze(-1).to(dtype)
        return torch.stack([keys, values], 2)

    @staticmethod
    def read(memory: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """memory (I, k, 2, E) of I images, queries (I, R, E) of their R rows each -> the read vectors (I, R, E).
        Products and sums rather than bmm: for a few rows per image and a few concepts, a batch of tiny matmuls
        costs three times as much on a CPU (forward and backward, 64 images, 20 concepts: 3.1 against 1.2 ms)."""
        keys, values = memory.unbind(2)
        scores = (keys.unsqueeze(1) * query.to(keys.dtype).unsqueeze(2)).sum(-1)  # (I, R, k)
        weights = torch.softmax(scores.float() / math.sqrt(keys.shape[-1]), dim=-1).to(values.dtype)
        return (weights.unsqueeze(-1) * values.unsqueeze(1)).sum(2)

    @staticmethod
    def summary(memory: torch.Tensor) -> torch.Tensor:
        """(I, k, 2, E) -> (I, E): the values' sum, the memory as one vector (for the initial state)."""
        return memory[:, :, 1].sum(1)


def per_row(values: torch.Tensor, rows: int) -> torch.Tensor:
    """(I, ...) entries of I images -> (rows, ...), each image's entry repeated for its rows (beams, samples)."""
    images = values.shape[0]
    return values if images == rows else values.repeat_interleave(rows // images, dim=0)
