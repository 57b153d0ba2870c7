"""Self-critical sequence training (Rennie et al. 2017): after cross-entropy training, optimise CIDEr-D itself.

For each training image the model samples several captions; each sample's reward is its CIDEr-D against the
image's references, and its baseline is the mean reward of the image's other samples. Raising the
log-probability of samples that beat their siblings and lowering the others is the policy gradient of
expected CIDEr-D, with no greedy decode needed for the baseline. With a BLEU weight the reward is CIDEr-D plus
that weight times the sample's BLEU-4, the policy gradient of both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from captioner.data.vocab import Vocabulary
from captioner.decoding.strategies import word_log_probs
from captioner.models.decoders import Decoder
from captioner.training.bleu_reward import SentenceBleu
from captioner.training.cider_reward import CiderD


@contextlib.contextmanager
def without_dropout(decoder: Decoder) -> Iterator[None]:
    """The model in eval mode for a while: show-and-tell's start() would otherwise drop out parts of the image."""
    was_training = decoder.training
    decoder.eval()
    try:
        yield
    finally:
        decoder.train(was_training)


class SelfCritical:
    def __init__(self, references: dict[int, list[list[str]]], vocab: Vocabulary, samples: int = 5,
                 bleu_weight: float = 0.0) -> None:
        """`references`: feature row of each training image -> its tokenized reference captions."""
        if samples < 2:
            raise ValueError("self-critical training needs at least 2 samples per image (one is the others' baseline)")
        self.cider = CiderD(references)
        self.bleu = SentenceBleu(references) if bleu_weight else None
        self.bleu_weight = bleu_weight
        self.vocab, self.samples = vocab, samples
        self.rows = sorted(references)

    def batches(self, images_per_batch: int, generator: torch.Generator) -> list[list[int]]:
        """Feature rows of the training images in random order, in batches."""
        order = torch.randperm(len(self.rows), generator=generator).tolist()
        return [[self.rows[i] for i in order[start:start + images_per_batch]]
                for start in range(0, len(order), images_per_batch)]

    def loss(self, decoder: Decoder, features: torch.Tensor, rows: list[int], max_length: int
             ) -> tuple[torch.Tensor, float]:
        """Policy-gradient loss for one batch of images (features (B, ...)), and the mean reward."""
        with without_dropout(decoder):  # the policy: the model as it decodes (step() applies no dropout anyway)
            tokens, log_probs, mask = self._sample(decoder, features, max_length)  # (B*S, T): an image's samples together
        rewards = torch.tensor([self.reward(rows[index // self.samples], self._words(sequence))
                                for index, sequence in enumerate(tokens.tolist())], device=features.device)
        grouped = rewards.view(-1, self.samples)
        baseline = (grouped.sum(1, keepdim=True) - grouped) / (self.samples - 1)  # mean of the siblings
        advantage = (grouped - baseline).view(-1)
        sequence_log_prob = (log_probs * mask).sum(1)
        loss = -(advantage * sequence_log_prob).sum() / mask.sum().clamp(min=1)
        return loss, float(rewards.mean())

    def reward(self, row: int, words: list[str]) -> float:
        """CIDEr-D of one sampled caption, plus the weighted BLEU-4 when there is a BLEU weight."""
        reward = self.cider.score(row, words)
        return reward + self.bleu_weight * self.bleu.score(row, words) if self.bleu is not None else reward

    def _sample(self, decoder: Decoder, features: torch.Tensor, max_length: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`samples` sampled captions per image: tokens (N, T), their log-probabilities (N, T) with gradients,
        and a mask of the steps that count (the words and the <end>, nothing after it)."""
        batch, device = features.shape[0] * self.samples, features.device
        state = decoder.with_rows_per_image(decoder.start(features), self.samples)
        previous = torch.full((batch,), self.vocab.start_id, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        tokens, log_probs, masks = [], [], []
        for _ in range(max_length):
            logits, state, _ = decoder.step(previous, state)
            step_log_probs = word_log_probs(logits, self.vocab, allow_unknown=True)
            choice = draw(step_log_probs.detach().exp())
            choice = torch.where(finished, torch.full_like(choice, self.vocab.end_id), choice)
            tokens.append(choice)
            log_probs.append(step_log_probs.gather(1, choice.unsqueeze(1)).squeeze(1))
            masks.append((~finished).float())
            finished = finished | (choice == self.vocab.end_id)
            previous = choice
            if bool(finished.all()):
                break
        return torch.stack(tokens, 1), torch.stack(log_probs, 1), torch.stack(masks, 1)

    def _words(self, sequence: list[int]) -> list[str]:
        return self.vocab.decode(sequence)


def draw(probabilities: torch.Tensor) -> torch.Tensor:
    """One word per row (N, V) -> (N,), drawn by inverting the cumulative distribution with one uniform number
    per row: torch.multinomial draws an exponential number for every word of the vocabulary, 5% of a
    self-critical step on a CPU."""
    cumulative = probabilities.float().cumsum(1)
    targets = torch.rand(probabilities.shape[0], 1, device=probabilities.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, targets, right=True).squeeze(1).clamp_(max=probabilities.shape[1] - 1)
