"""Concepts: the words a photo can be tagged with, built from the training captions.

The K most frequent content words, function words left out, each folded to one lemma ("dogs" -> "dog";
"running", "runs", "ran" -> "run") by lemminflect's dictionary (no suffix rules of our own). An -ing or plural
form the dictionary knows both as a noun and as a verb form is read as the noun where the captions use it as
one, that is where its noun plural occurs too ("a tall building" / "two buildings" -> "building", but
"running" -> "run"). Saved with the model, like the caption vocabulary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from captioner.errors import CaptionerError

CONCEPTS_FORMAT = "captioner-concepts"
CONCEPTS_VERSION = 1
DEFAULT_NUM_CONCEPTS = 1000

# Closed-class English words (determiners, pronouns, prepositions, conjunctions, auxiliaries, numerals and a
# few adverbs of degree): they say nothing of what a photo shows.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every all both either neither another other such no
i me my mine we us our ours you your yours he him his she her hers it its they them their theirs one ones
who whom whose which what where when why how there here
of in on at to into onto from by with without within about above below under over through across along
around behind beside besides between beyond near off out up down upon inside outside toward towards against
among during before after while until since for as like than via per
and or but nor so yet if because though although whether
be is am are was were been being have has had having do does did doing done
will would shall should can could may might must
not very too also just only quite rather almost even still then now
two three four five six seven eight nine ten several many much more most few lot lots
s t
""".split())


def _lemmatizer():
    try:
        import lemminflect
    except ImportError as error:  # a dependency, so only a broken install gets here
        raise CaptionerError("concepts need the lemminflect package: pip install lemminflect") from error
    return lemminflect


@lru_cache(maxsize=65536)
def _lemmas(word: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted(_lemmatizer().getAllLemmas(word).items()))


def lemma(word: str, noun_plurals: frozenset[str] = frozenset()) -> str:
    """The word's lemma: a verb form's verb, else its noun, adjective or adverb; `noun_plurals` are plural
    nouns seen in the captions, which make a form such as "building" a noun."""
    lemmas = dict(_lemmas(word))
    verb = lemmas.get("VERB", ()) or lemmas.get("AUX", ())
    noun = lemmas.get("NOUN", ())
    if verb and verb[0] != word and not (noun and noun[0] == word and _plural(word) in noun_plurals):
        return verb[0]
    for pos in ("NOUN", "ADJ", "ADV", "PROPN"):
        if lemmas.get(pos):
            return lemmas[pos][0]
    return verb[0] if verb else word


def _plural(word: str) -> str:
    inflected = _lemmatizer().getInflection(word, tag="NNS")
    return inflected[0] if inflected else word + "s"


class ConceptVocabulary:
    """The concepts, most frequent first; concept(word) maps a caption word to its concept (or None)."""

    def __init__(self, concepts: Sequence[str], noun_plurals: Iterable[str] = ()) -> None:
        self.concepts = list(concepts)
        self.index = {concept: position for position, concept in enumerate(self.concepts)}
        if len(self.index) != len(self.concepts):
            raise ValueError("concepts must be unique")
        self.noun_plurals = frozenset(noun_plurals)

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], size: int = DEFAULT_NUM_CONCEPTS) -> ConceptVocabulary:
        """The `size` most frequent concepts of these tokenized captions (each caption counts a concept once)."""
        if size < 1:
            raise CaptionerError(f"--num_concepts must be at least 1, got {size}")
        captions = [list(tokens) for tokens in captions]
        words = Counter(word for tokens in captions for word in tokens)
        plurals = frozenset(word for word in words if dict(_lemmas(word)).get("NOUN", (word,))[0] != word)
        vocabulary = cls([], plurals)
        counts = Counter(concept for tokens in captions for concept in vocabulary.concepts_of(tokens))
        ranked = sorted(counts, key=lambda concept: (-counts[concept], concept))[:size]
        return cls(ranked, plurals)

    def concept(self, word: str) -> str | None:
        """The concept a caption word stands for, whether or not it is among the K kept; None for a function word."""
        if word in FUNCTION_WORDS or not word.isalpha():
            return None
        folded = lemma(word, self.noun_plurals)
        return None if folded in FUNCTION_WORDS else folded

    def concepts_of(self, tokens: Sequence[str]) -> set[str]:
        """The distinct concepts of a tokenized caption (kept or not)."""
        return {concept for concept in map(self.concept, tokens) if concept is not None}

    def ids_of(self, tokens: Sequence[str]) -> list[int]:
        """The positions of a caption's concepts among the K kept."""
        return sorted(self.index[c] for c in self.concepts_of(tokens) if c in self.index)

    def __len__(self) -> int:
        return len(self.concepts)

    def to_dict(self) -> dict:
        return {"format": CONCEPTS_FORMAT, "version": CONCEPTS_VERSION, "concepts": self.concepts,
                "noun_plurals": sorted(self.noun_plurals)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "concepts") -> ConceptVocabulary:
        if not isinstance(data, dict) or data.get("format") != CONCEPTS_FORMAT or not isinstance(
                data.get("concepts"), list):
            raise CaptionerError(f"{source} does not hold a captioner concept vocabulary")
        return cls(data["concepts"], data.get("noun_plurals", ()))
