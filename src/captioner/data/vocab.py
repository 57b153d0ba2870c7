"""Caption cleaning and the Vocabulary: words <-> ids, built from the train split only, saved as JSON."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from captioner.errors import CaptionerError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # <pad> is id 0, so zero-padded batches are padding everywhere
VOCAB_FORMAT = "captioner-vocab"
VOCAB_VERSION = 1

_APOSTROPHES = re.compile(r"['\u2019`]")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def clean_caption(text: str) -> list[str]:
    """Lowercase, strip punctuation, split on spaces: "A dog's ball." -> ["a", "dogs", "ball"]."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = _APOSTROPHES.sub("", text)
    return _NOT_WORD.sub(" ", text).split()


class Vocabulary:
    """Word ids with the specials first: <pad>=0, <start>=1, <end>=2, <unk>=3."""

    def __init__(self, words: Sequence[str], freq_threshold: int = 1, max_vocab: int | None = None) -> None:
        self.itos: list[str] = list(SPECIALS) + [word for word in words if word not in SPECIALS]
        self.stoi: dict[str, int] = {word: index for index, word in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")
        self.freq_threshold = freq_threshold
        self.max_vocab = max_vocab

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], freq_threshold: int = 1,
              max_vocab: int | None = None) -> Vocabulary:
        """Keep words seen at least `freq_threshold` times; with `max_vocab`, only the most frequent (specials included)."""
        if freq_threshold < 1:
            raise CaptionerError(f"--freq_threshold must be at least 1, got {freq_threshold}")
        if max_vocab is not None and max_vocab <= len(SPECIALS):
            raise CaptionerError(f"--max_vocab must be larger than the {len(SPECIALS)} special tokens, got {max_vocab}")
        counts = Counter(word for tokens in captions for word in tokens)
        words = sorted((word for word, count in counts.items() if count >= freq_threshold),
                       key=lambda word: (-counts[word], word))
        if max_vocab is not None:
            words = words[: max_vocab - len(SPECIALS)]
        return cls(words, freq_threshold, max_vocab)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Token ids wrapped in <start> ... <end>; unknown words become <unk>."""
        return [self.start_id, *(self.stoi.get(word, self.unk_id) for word in tokens), self.end_id]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first <end>, without <start>/<pad>; ids outside the vocabulary are <unk>."""
        words = []
        for index in ids:
            index = int(index)
            if index == self.end_id:
                break
            if index in (self.pad_id, self.start_id):
                continue
            words.append(self.itos[index] if 0 <= index < len(self.itos) else UNK)
        return words

    def to_dict(self) -> dict:
        return {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "itos": self.itos,
                "freq_threshold": self.freq_threshold, "max_vocab": self.max_vocab}

    @classmethod
    def from_dict(cls, data: dict, source: str = "vocabulary") -> Vocabulary:
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT or not isinstance(data.get("itos"), list):
            raise CaptionerError(f"{source} is not a captioner vocabulary (expected a JSON object with format "
                                 f"{VOCAB_FORMAT!r} and an `itos` list)")
        itos = data["itos"]
        if list(itos[: len(SPECIALS)]) != list(SPECIALS):
            raise CaptionerError(f"{source}: the first words must be the specials {', '.join(SPECIALS)}")
        return cls(itos[len(SPECIALS):], data.get("freq_threshold", 1), data.get("max_vocab"))

    def save(self, path: Path | str) -> None:
        from captioner.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path | str) -> Vocabulary:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise CaptionerError(f"vocabulary file {path} does not exist") from error
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CaptionerError(f"{path} is not valid JSON: {error}") from error
        return cls.from_dict(data, str(path))
