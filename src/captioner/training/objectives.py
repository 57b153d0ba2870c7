"""What a training step minimises. Cross-entropy: teacher forcing, padding ignored, with Xu et al.'s doubly
stochastic attention regularisation. Self-critical training (self_critical.py) may mix in the cross-entropy of
each image's references (ReferenceCrossEntropy), which keeps its captions close to human ones."""

from __future__ import annotations

import functools

import torch
from torch import nn

from captioner.training.batches import CaptionExamples, pad_captions


class CrossEntropy:
    def __init__(self, pad_id: int, label_smoothing: float = 0.0, alpha_c: float = 0.0) -> None:
        self.pad_id, self.alpha_c = pad_id, alpha_c
        # summed, then divided by the words of the whole (global) batch: the same loss on 1 or N processes
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=pad_id, label_smoothing=label_smoothing, reduction="sum")

    def __call__(self, model: nn.Module, features: torch.Tensor, captions: torch.Tensor, total_words: int,
                 total_captions: int, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise and the summed cross-entropy (to report). Both are divided by the words and
        captions of the whole batch across processes, times the number of processes (DDP averages gradients),
        so N processes compute exactly the gradient of one process with the global batch."""
        logits, alphas = model(features, captions)  # (B, T-1, V)
        targets = captions[:, 1:]
        cross_entropy = self.summed(logits, targets)
        loss = cross_entropy * (world_size / total_words)
        if alphas is not None and self.alpha_c > 0:
            # doubly stochastic regularisation: over the caption, every region gets about one unit of attention
            mask = (targets != self.pad_id).unsqueeze(2).float()
            coverage = (alphas.float() * mask).sum(1)  # (B, L)
            penalty = ((1.0 - coverage) ** 2).mean(1).sum()
            loss = loss + self.alpha_c * penalty * (world_size / total_captions)
        return loss, cross_entropy.detach()

    def summed(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of logits (B, T, V) against targets (B, T), in fp32."""
        return self.loss_fn(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


class ReferenceCrossEntropy:
    """Teacher-forced cross-entropy per word of some images' reference captions. With `references` K, only K of
    each image's references, drawn anew each time: the teacher-forced pass over all five costs as much as the
    self-critical sampling."""

    def __init__(self, objective: CrossEntropy, examples: CaptionExamples, references: int | None = None) -> None:
        self.objective, self.examples, self.references = objective, examples, references
        self.pad_id = objective.pad_id

    @functools.cached_property
    def examples_of_row(self) -> dict[int, list[int]]:
        """The training captions (example indices) of each image's feature row."""
        examples: dict[int, list[int]] = {}
        for index, row in enumerate(self.examples.rows.tolist()):
            examples.setdefault(row, []).append(index)
        return examples

    def __call__(self, model: nn.Module, features: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """features (B, ...) of the images of feature rows `rows`."""
        examples = [(position, index) for position, row in enumerate(rows)
                    for index in self._some(self.examples_of_row[row])]
        captions = pad_captions(self.examples, [index for _, index in examples]).to(features.device)
        image_of = torch.tensor([position for position, _ in examples], device=features.device)
        words = int((captions[:, 1:] != self.pad_id).sum())
        loss, _ = self.objective(model, features.index_select(0, image_of), captions, words, len(examples))
        return loss

    def _some(self, examples: list[int]) -> list[int]:
        if not self.references or self.references >= len(examples):
            return examples
        return [examples[i] for i in sorted(torch.randperm(len(examples))[:self.references].tolist())]


class ConceptLoss:
    """Binary cross-entropy of the concept head against each image's concepts: as targets, the share of the
    image's references that name each concept (one that all five name is surer than one that one names).
    Mean over images and concepts, so that it sits beside the captions' loss without swamping the gradient
    clipping."""

    def __init__(self, targets: torch.Tensor, weight: float = 1.0) -> None:
        self.targets, self.weight = targets, weight  # (feature rows, K)

    def __call__(self, decoder: nn.Module, features: torch.Tensor, rows) -> torch.Tensor:
        logits = decoder.concept_logits(features)
        targets = self.targets[torch.as_tensor(rows, dtype=torch.long)].to(logits.device)
        return self.weight * nn.functional.binary_cross_entropy_with_logits(logits, targets)


def concept_targets(records, features, concepts, clean) -> torch.Tensor:
    """(rows, K): for each image the encoder could read, the share of its references naming each concept."""
    rows = {record.image: features.row(record.image) for record in records}
    size = max((row for row in rows.values() if row is not None), default=-1) + 1
    targets = torch.zeros(size, len(concepts))
    for record in records:
        row = rows[record.image]
        if row is None or not record.captions:
            continue
        for text in record.captions:
            for index in concepts.ids_of(clean(text)):
                targets[row, index] += 1.0 / len(record.captions)
    return targets
