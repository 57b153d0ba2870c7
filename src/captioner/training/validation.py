"""How well the model does on the dev split after each epoch: cross-entropy per word, and BLEU and CIDEr of
its dev captions, decoded as users will decode them (the preset's recommended decoding) or greedily. Under
torchrun each process computes its share and every process gets the same totals."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
import torch

from captioner.data.records import ImageRecord
from captioner.data.vocab import Vocabulary, clean_caption
from captioner.decoding.settings import DecodeSettings
from captioner.decoding.strategies import decode
from captioner.devices import autocast
from captioner.models.decoders import Decoder
from captioner.training.batches import CaptionExamples, pad_captions
from captioner.training.distributed import Processes
from captioner.training.objectives import CrossEntropy

FeaturesOfRows = Callable[[list[int] | np.ndarray], torch.Tensor]
BATCH = 256  # dev captions per teacher-forced batch
CAPTIONED_AT_ONCE = 250  # dev images per greedy decoding batch


@torch.no_grad()
def dev_loss(decoder: Decoder, dev: CaptionExamples, features_of_rows: FeaturesOfRows, objective: CrossEntropy,
             processes: Processes, device: torch.device, amp: bool) -> float:
    """Cross-entropy per word of the dev captions. They go through the teacher-forced pass shortest first:
    batches of similar length step over half the padding."""
    decoder.eval()
    total, words = 0.0, 0
    order = sorted(range(len(dev)), key=lambda index: len(dev.captions[index]))
    batches = [order[start:start + BATCH] for start in range(0, len(order), BATCH)]
    for indices in processes.shard(batches):
        captions = pad_captions(dev, indices).to(device)
        features = features_of_rows(dev.rows[indices])
        with autocast(device, amp):
            logits, _ = decoder(features.to(device), captions)
            total += float(objective.summed(logits, captions[:, 1:]))
        words += int((captions[:, 1:] != objective.pad_id).sum())
    total, words = processes.sum(total, words)
    return total / max(words, 1)


def dev_settings(recommended: dict | None, max_length: int, amp: bool) -> DecodeSettings:
    """The recommended decoding when there is one (so that best.pt is the epoch users will caption best
    with), else greedy."""
    if recommended:
        return DecodeSettings(**{**recommended, "max_length": max_length, "amp": amp})
    return DecodeSettings("greedy", max_length=max_length, amp=amp)


@torch.no_grad()
def dev_metrics(decoder: Decoder, records: list[ImageRecord], row_of: Callable[[ImageRecord], int],
                features_of_rows: FeaturesOfRows, vocab: Vocabulary, references: dict[int, list[str]],
                processes: Processes, settings: DecodeSettings) -> dict[str, float]:
    """Captions of these dev images, scored with BLEU and CIDEr; under torchrun each process captions its
    share of the images and every process scores all of them. With settings.flip_average, features_of_rows
    must give both views (B, 2, ...)."""
    decoder.eval()
    mine = processes.shard(list(range(len(records))))
    hypotheses = {}
    for start in range(0, len(mine), CAPTIONED_AT_ONCE):
        keys = mine[start:start + CAPTIONED_AT_ONCE]
        features = features_of_rows([row_of(records[key]) for key in keys])
        for key, (decoded,) in zip(keys, decode(decoder, features, vocab, settings)):
            hypotheses[key] = " ".join(vocab.decode(decoded.tokens))
    return dev_scores(references, processes.merge(hypotheses))


def cleaned_references(records: list[ImageRecord]) -> dict[int, list[str]]:
    """The references of these images as the dev scores compare them: cleaned like the training captions."""
    return {key: [" ".join(clean_caption(text)) for text in record.captions] for key, record in enumerate(records)}


def dev_scores(references: dict[int, list[str]], hypotheses: dict[int, str]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D (0-1 and 0-10, as the scorers return them) with the coco-caption scorers on
    already-cleaned text: quick, Java-free, and ranking epochs the way the final evaluation would."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    references = {k: references[k] for k in hypotheses}
    hypotheses = {k: [v or "<empty>"] for k, v in hypotheses.items()}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their internals
        bleu, _ = Bleu(4).compute_score(references, hypotheses, verbose=0)
        cider, _ = Cider().compute_score(references, hypotheses)
    return {**{f"BLEU-{n + 1}": float(score) for n, score in enumerate(bleu)}, "CIDEr": float(cider)}
