"""How likely a decoder finds given sentences as captions of given images: log P(caption | image), summed
over the caption's words and its <end>. Search ranks a library's images by it."""

from __future__ import annotations

import torch

from captioner.devices import autocast
from captioner.models.decoder import Decoder


@torch.no_grad()
def caption_log_likelihood(decoder: Decoder, features: torch.Tensor, captions: torch.Tensor,
                           pad_id: int = 0, amp: bool = True) -> torch.Tensor:
    """(B,) float32 summed log-probabilities of each row's caption given its image, by one teacher-forced pass.

    features: (B, C) or (B, L, C) as the decoder reads them; captions: (B, T) ids starting with <start> and
    ending with <end>, right-padded with `pad_id`."""
    decoder.eval()
    with autocast(features.device, amp):
        logits, _ = decoder(features, captions)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    targets = captions[:, 1:]
    picked = log_probs.gather(2, targets.unsqueeze(2)).squeeze(2)
    return (picked * (targets != pad_id)).sum(dim=1)
