"""Sentence-level BLEU-4 of a candidate caption, as coco-caption scores each image, fast enough to be a reward.

Self-critical training on CIDEr-D alone leaves BLEU-4 behind; adding this to the reward aims the policy at
both. Each image's clipped reference n-gram counts and lengths are computed once. The formula is
coco-caption's per-image score: clipped n-gram precisions (n = 1..4, with its tiny smoothing constants),
their geometric mean, times the brevity penalty against the reference length closest to the candidate's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

from captioner.training.cider_reward import N, ngram_counts

TINY, SMALL = 1e-15, 1e-9  # coco-caption's: a precision with no match is ~0, never a division by zero


class SentenceBleu:
    def __init__(self, references: dict[Hashable, list[list[str]]]) -> None:
        """`references`: image -> its tokenized reference captions."""
        self.references: dict[Hashable, tuple[list[int], list[Counter]]] = {}
        for image, captions in references.items():
            most = [Counter() for _ in range(N)]
            for words in captions:
                for n, counts in enumerate(ngram_counts(words)):
                    most[n] |= counts  # | keeps each n-gram's largest count: the clipping limit
            self.references[image] = ([len(words) for words in captions], most)

    def score(self, image: Hashable, words: Sequence[str]) -> float:
        """BLEU-4 of one candidate against the references of `image` (0..1, as coco-caption's per-image list)."""
        lengths, most = self.references[image]
        length = len(words)
        product = 1.0
        for n, counts in enumerate(ngram_counts(words)):
            correct = sum(min(count, most[n].get(gram, 0)) for gram, count in counts.items())
            product *= (correct + TINY) / (max(0, length - n) + SMALL)
        bleu = product ** (1.0 / N)
        closest = min((abs(reference - length), reference) for reference in lengths)[1]
        ratio = (length + TINY) / (closest + SMALL)
        return bleu * math.exp(1 - 1 / ratio) if ratio < 1 else bleu
