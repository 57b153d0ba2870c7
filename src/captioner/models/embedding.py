"""A small text-image embedding (VSE-style): photos and sentences mapped into one space where a caption lies
near its photo, so that search can score every photo of a library against a query with one matrix product.

The image side reads the features the decoder reads (the mean and maximum over the grid's regions, or the
pooled vector), the text side a GRU over the caption's words, whose embeddings start from the decoder's: they
already know which words go with which pictures. Both ends are L2-normalised; `scale` is the learned inverse
temperature of the contrastive loss that trains them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional


@dataclass
class EmbeddingConfig:
    feature_dim: int
    vocab_size: int
    word_dim: int = 512
    dim: int = 512
    pad_id: int = 0
    dropout: float = 0.1  # on the words and the image summary, in training

    def to_dict(self) -> dict:
        return asdict(self)


class TextImageEmbedding(nn.Module):
    def __init__(self, config: EmbeddingConfig) -> None:
        super().__init__()
        self.config = config
        self.image = nn.Sequential(nn.Linear(2 * config.feature_dim, config.dim), nn.GELU(),
                                   nn.Linear(config.dim, config.dim))
        self.image_skip = nn.Linear(2 * config.feature_dim, config.dim, bias=False)
        self.words = nn.Embedding(config.vocab_size, config.word_dim, padding_idx=config.pad_id)
        self.text = nn.GRU(config.word_dim, config.dim, batch_first=True, bidirectional=True)
        self.text_out = nn.Linear(2 * config.dim, config.dim)
        self.scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP starts
        self.dropout = nn.Dropout(config.dropout)

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, L, C) or (B, C) -> (B, dim) unit vectors, fp32."""
        features = features.float()
        summary = (torch.cat([features.mean(1), features.amax(1)], -1) if features.dim() == 3
                   else torch.cat([features, features], -1))
        summary = self.dropout(summary)
        return functional.normalize(self.image(summary) + self.image_skip(summary), dim=-1)

    def embed_views(self, views: torch.Tensor) -> torch.Tensor:
        """views (B, V, ...): each photo seen several ways (itself and its mirror image) -> (B, dim), the
        normalised sum of the views' embeddings. Dev R@1 18.8 -> 20.0 with the mirror image beside the photo."""
        embedded = self.embed_images(views.flatten(0, 1)).view(views.shape[0], views.shape[1], -1)
        return functional.normalize(embedded.sum(1), dim=-1)

    @torch.no_grad()
    def embed_photos(self, features: torch.Tensor, views: bool) -> torch.Tensor:
        """A library's photos: (B, ...) or with `views` (B, V, ...) features on any device -> (B, dim) on the CPU."""
        features = features.to(next(self.parameters()).device)
        return (self.embed_views(features) if views else self.embed_images(features)).cpu()

    def embed_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) word ids, right-padded, no <start>/<end> needed -> (B, dim) unit vectors.

        The mean of the GRU's states over the real words: a sentence of any length lands on the same scale."""
        mask = (tokens != self.config.pad_id).unsqueeze(-1).float()
        states, _ = self.text(self.dropout(self.words(tokens)))
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return functional.normalize(self.text_out(pooled), dim=-1)

    def contrastive_loss(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch: row i's caption against every photo, row i's photo against every
        caption. Rows must be distinct photos (a photo twice would be its own negative). VSE++'s hinge on the
        hardest negative on top of it changed dev R@1 by 0.1."""
        images, texts = self.embed_images(features), self.embed_texts(tokens)
        logits = self.scale.exp().clamp(max=100.0) * texts @ images.T
        targets = torch.arange(len(logits), device=logits.device)
        return (functional.cross_entropy(logits, targets) + functional.cross_entropy(logits.T, targets)) / 2


def build_embedding(config: EmbeddingConfig, state: dict | None = None) -> TextImageEmbedding:
    model = TextImageEmbedding(config)
    if state is not None:
        model.load_state_dict(state)
    return model
