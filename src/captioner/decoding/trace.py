"""A caption replayed through its decoder, step by step: where an attention model looked for each word and how
sure it was of it. What the attention pictures (visualize.py) and the caption page's word hover show."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from captioner.data.vocab import Vocabulary
from captioner.decoding.strategies import word_log_probs
from captioner.models.decoders import Decoder

END = "<end>"


@dataclass
class AttentionTrace:
    """One caption with, for each step (each word, then <end>), the attention grid and the word's probability."""

    words: list[str]  # the caption's words followed by "<end>"
    attention: np.ndarray  # (steps, H, W), each map sums to 1
    probabilities: np.ndarray  # (steps,) probability the model gave each word when it chose it

    @property
    def entropy(self) -> np.ndarray:
        flat = self.attention.reshape(len(self.words), -1)
        return -(flat * np.log(np.clip(flat, 1e-12, None))).sum(1)


@torch.no_grad()
def trace_caption(decoder: Decoder, features: torch.Tensor, vocab: Vocabulary, tokens: list[int],
                  grid: tuple[int, int]) -> AttentionTrace:
    """Replay a caption through the decoder: the attention and probability of every step, whatever strategy
    chose the words."""
    if not decoder.uses_grid:
        raise ValueError("only attention decoders have attention to show")
    sequence = [*tokens, vocab.end_id]
    state = decoder.start(features.unsqueeze(0))
    previous = torch.tensor([vocab.start_id], device=features.device)
    maps, probabilities = [], []
    for token in sequence:
        logits, state, alpha = decoder.step(previous, state)
        probabilities.append(float(word_log_probs(logits, vocab)[0, token].exp()))
        maps.append(alpha[0].float().view(*grid).cpu().numpy())
        previous = torch.tensor([token], device=features.device)
    return AttentionTrace([*vocab.decode(tokens), END], np.stack(maps), np.asarray(probabilities))
