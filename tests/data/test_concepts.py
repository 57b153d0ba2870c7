"""The concept vocabulary: the most frequent content words of the training captions, function words out, each
word folded to one lemma by lemminflect, saved and loaded with the model."""

from __future__ import annotations

import json

import pytest

from captioner.data.concepts import FUNCTION_WORDS, ConceptVocabulary
from captioner.data.vocab import clean_caption
from captioner.errors import CaptionerError

CAPTIONS = ["A dog is running on the beach .", "Two dogs run through the grass", "A dog runs in the snow",
            "A man in a red shirt is sitting on a bench", "Men are standing near a tall building",
            "Two buildings beside a road", "The children played with a ball", "a child is playing with dogs"]


def vocabulary(size: int = 100) -> ConceptVocabulary:
    return ConceptVocabulary.build([clean_caption(text) for text in CAPTIONS], size)


def test_function_words_are_out_and_forms_fold_to_one_lemma() -> None:
    concepts = vocabulary()
    assert not set(concepts.concepts) & FUNCTION_WORDS
    assert concepts.concepts[0] == "dog" and "dogs" not in concepts.concepts  # 4 captions name a dog
    assert {"run", "play", "child", "man", "sit", "stand", "building", "red", "shirt"} <= set(concepts.concepts)
    assert not {"running", "runs", "played", "children", "men", "buildings", "is", "the", "two"} & set(concepts.concepts)
    # "building" is a noun where the captions also say "buildings"; "running" stays the verb
    assert concepts.concept("building") == "building" and concepts.concept("running") == "run"
    assert concepts.concepts_of(clean_caption("Dogs are running")) == {"dog", "run"}


def test_the_most_frequent_k_are_kept_each_caption_counting_once() -> None:
    concepts = vocabulary(3)
    assert len(concepts) == 3 and concepts.concepts[:2] == ["dog", "run"]
    assert concepts.ids_of(clean_caption("a dog runs after a dog")) == [0, 1]
    with pytest.raises(CaptionerError, match="--num_concepts must be at least 1"):
        vocabulary(0)


def test_saved_and_loaded() -> None:
    concepts = vocabulary()
    again = ConceptVocabulary.from_dict(json.loads(json.dumps(concepts.to_dict())))
    assert again.concepts == concepts.concepts and again.concept("building") == "building"
    with pytest.raises(CaptionerError, match="concept vocabulary"):
        ConceptVocabulary.from_dict({"format": "captioner-vocab"})
