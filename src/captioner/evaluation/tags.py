"""How good a model's tags are, against the concepts an image's references name: mean average precision over
the concepts, and precision and recall of each image's five best tags. A concept counts as present when at
least 2 of the image's references use it, and, more leniently, when any does. Beside the concept head's
tags, the same scores for the content words of the model's own caption: the tags a user would get from the
caption alone (in the order the caption names them; words outside the model's concepts are left out)."""

from __future__ import annotations

import numpy as np

from captioner.data.concepts import ConceptVocabulary
from captioner.data.vocab import clean_caption

AT = 5
AGREEMENT = {"present in >= 2 references": 2, "present in >= 1 reference": 1}


def tag_scores(concepts: ConceptVocabulary, probabilities: np.ndarray, references: list[list[str]],
               captions: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """probabilities (N, K) of the head, the N images' reference captions and the model's caption of each ->
    {agreement: {"head" | "caption words": {"mAP", "P@5", "R@5"}}}, x100."""
    counts = np.zeros(probabilities.shape, dtype=np.int64)
    for image, texts in enumerate(references):
        for text in texts:
            counts[image, concepts.ids_of(clean_caption(text))] += 1
    caption_ranking = [_in_caption_order(concepts, text) for text in captions]
    caption_scores = np.zeros(probabilities.shape)
    for image, ranked in enumerate(caption_ranking):
        caption_scores[image, ranked] = 1.0
    head_ranking = [list(np.argsort(-row, kind="stable")[:AT]) for row in probabilities]
    scores = {}
    for name, needed in AGREEMENT.items():
        truth = counts >= needed
        scores[name] = {"head": _scores(truth, probabilities, head_ranking),
                        "caption words": _scores(truth, caption_scores, caption_ranking)}
    return scores


def _in_caption_order(concepts: ConceptVocabulary, text: str) -> list[int]:
    ranked = []
    for word in clean_caption(text):
        concept = concepts.concept(word)
        index = concepts.index.get(concept) if concept else None
        if index is not None and index not in ranked:
            ranked.append(index)
    return ranked


def _scores(truth: np.ndarray, scores: np.ndarray, rankings: list[list[int]]) -> dict[str, float]:
    present = truth.sum(1)
    hits = np.array([truth[image, ranking[:AT]].sum() for image, ranking in enumerate(rankings)])
    counted = present > 0  # recall over images that have a concept at all
    return {"mAP": 100 * mean_average_precision(truth, scores),
            f"P@{AT}": 100 * float((hits / AT).mean()),
            f"R@{AT}": 100 * float((hits[counted] / present[counted]).mean()) if counted.any() else 0.0}


def mean_average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """The mean over concepts (those present in some image) of the average precision of ranking the images by
    the concept's score; tied scores are one step of the precision-recall curve, as scikit-learn's
    average_precision_score has it."""
    values = [average_precision(truth[:, k], scores[:, k]) for k in range(truth.shape[1]) if truth[:, k].any()]
    return float(np.mean(values)) if values else 0.0


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    truth, scores = truth[order], scores[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(truth)[last_of_each_score]
    precision = true_positives / (last_of_each_score + 1)
    recall = true_positives / truth.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
