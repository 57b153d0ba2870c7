"""P(concept | image): a multi-label head on the features a decoder reads, the tags of a photo.

From the grid (B, L, C) it reads the mean and the maximum over the regions (a concept may fill the image or
one corner of it), from pooled features (B, C) the vector alone; one hidden layer, then a logit per concept.
It costs about 2 MFLOP per image, nothing next to the decoder. No dropout by default: dropout would draw from
the random stream the decoder's own dropout draws from, and change the captions' training.
"""

from __future__ import annotations

import torch
from torch import nn


class ConceptHead(nn.Module):
    def __init__(self, feature_dim: int, num_concepts: int, hidden_size: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden = nn.Linear(2 * feature_dim, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classify = nn.Linear(hidden_size, num_concepts)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, L, C) or (B, C) -> concept logits (B, K), in fp32."""
        device = features.device.type  # as the decoders do: the precision the matmuls run in
        features = features.to(torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                               else self.hidden.weight.dtype)
        summary = (torch.cat([features.mean(1), features.amax(1)], -1) if features.dim() == 3
                   else torch.cat([features, features], -1))
        return self.classify(self.dropout(torch.nn.functional.gelu(self.hidden(summary)))).float()
