"""CIDEr-D of many candidate captions against fixed references, fast enough to be a training reward.

The coco-caption scorer recomputes document frequencies from the references on every call; self-critical
training scores hundreds of captions per batch, so here the document frequencies come once from the training
references, and each image's reference vectors are computed once. The formula is coco-caption's CIDEr-D:
tf-idf n-gram vectors (n = 1..4), candidate counts clipped at the reference's, a Gaussian penalty on the
length difference (sigma 6), averaged over references and n, times 10.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

N = 4
SIGMA = 6.0

Vector = list[dict[tuple[str, ...], float]]  # one tf-idf dict per n


def ngram_counts(words: Sequence[str]) -> list[Counter]:
    return [Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1)) for n in range(1, N + 1)]


class CiderD:
    def __init__(self, references: dict[Hashable, list[list[str]]]) -> None:
        """`references`: image -> its tokenized reference captions (the corpus for document frequencies)."""
        frequency: Counter = Counter()
        for captions in references.values():
            seen = set()
            for words in captions:
                for counts in ngram_counts(words):
                    seen.update(counts)
            frequency.update(seen)
        self.log_images = math.log(float(len(references)))
        self.frequency = frequency
        self.references = {image: [self._vector(words) for words in captions]
                           for image, captions in references.items()}

    def _vector(self, words: Sequence[str]) -> tuple[Vector, list[float], int]:
        vectors, norms = [], []
        for counts in ngram_counts(words):
            vector = {gram: count * (self.log_images - math.log(max(1.0, self.frequency.get(gram, 0.0))))
                      for gram, count in counts.items()}
            vectors.append(vector)
            norms.append(math.sqrt(sum(value * value for value in vector.values())))
        return vectors, norms, len(words)

    def score(self, image: Hashable, words: Sequence[str]) -> float:
        """CIDEr-D of one candidate against the references of `image` (coco-caption's scale: about 0..10)."""
        candidate, candidate_norms, length = self._vector(words)
        references = self.references[image]
        total = 0.0
        for reference, reference_norms, reference_length in references:
            penalty = math.exp(-((length - reference_length) ** 2) / (2 * SIGMA ** 2))
            for n in range(N):
                if not candidate_norms[n] or not reference_norms[n]:
                    continue
                shared = sum(min(value, reference[n].get(gram, 0.0)) * reference[n].get(gram, 0.0)
                             for gram, value in candidate[n].items() if gram in reference[n])
                total += penalty * shared / (candidate_norms[n] * reference_norms[n])
        return 10.0 * total / (N * len(references))
