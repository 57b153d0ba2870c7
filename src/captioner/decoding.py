"""Turn image features into captions, batched over images: every image of the batch decodes at once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioner.decoders import Decoder
from captioner.data.vocab import Vocabulary


@dataclass
class Decoded:
    """Token ids (without <start>/<end>), their summed log-probability, and per-step attention if any."""

    tokens: list[int]
    log_prob: float
    attention: torch.Tensor | None = None  # (steps, L)


@torch.no_grad()
def greedy(decoder: Decoder, features: torch.Tensor, vocab: Vocabulary, max_length: int = 30) -> list[Decoded]:
    """The most likely word at every step. Logits are computed in fp32 (bf16 near-ties flip words)."""
    batch = features.shape[0]
    state = decoder.start(features)
    tokens = torch.full((batch,), vocab.start_id, dtype=torch.long, device=features.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=features.device)
    chosen, scores, alphas = [], torch.zeros(batch, device=features.device), []
    for _ in range(max_length):
        logits, state, alpha = decoder.step(tokens, state)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        best, tokens = log_probs.max(-1)
        scores += torch.where(finished, torch.zeros_like(best), best)
        chosen.append(tokens)
        if alpha is not None:
            alphas.append(alpha)
        finished |= tokens == vocab.end_id
        if finished.all():
            break
    ids = torch.stack(chosen, 1).tolist()  # (B, steps)
    attention = torch.stack(alphas, 1) if alphas else None  # (B, steps, L)
    results = []
    for row, sequence in enumerate(ids):
        length = sequence.index(vocab.end_id) if vocab.end_id in sequence else len(sequence)
        results.append(Decoded(sequence[:length], float(scores[row]),
                               attention[row, :length].cpu() if attention is not None else None))
    return results
