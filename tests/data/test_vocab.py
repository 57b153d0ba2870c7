from __future__ import annotations

from pathlib import Path

import pytest

from captioner.data.vocab import SPECIALS, Vocabulary, clean_caption
from captioner.errors import CaptionerError


def test_clean_caption() -> None:
    assert clean_caption("A dog's ball, on the GRASS!") == ["a", "dogs", "ball", "on", "the", "grass"]
    assert clean_caption("  Café  -- 2 kids . ") == ["cafe", "2", "kids"]
    assert clean_caption("...") == []


def test_specials_come_first_and_threshold_applies() -> None:
    vocab = Vocabulary.build([["a", "dog"], ["a", "cat"], ["a", "dog"]], freq_threshold=2)
    assert vocab.itos[:4] == list(SPECIALS)
    assert vocab.stoi["<pad>"] == 0
    assert vocab.itos[4:] == ["a", "dog"]  # most frequent first; "cat" seen once is dropped


def test_max_vocab_keeps_the_most_frequent() -> None:
    vocab = Vocabulary.build([["a", "a", "a", "b", "b", "c"]], max_vocab=6)
    assert vocab.itos[4:] == ["a", "b"]
    with pytest.raises(CaptionerError):
        Vocabulary.build([["a"]], max_vocab=4)


def test_encode_decode_round_trip_and_unknown_words() -> None:
    vocab = Vocabulary.build([["a", "dog", "runs"]])
    ids = vocab.encode(["a", "dog", "flies"])
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert vocab.decode(ids) == ["a", "dog", "<unk>"]
    assert vocab.decode(vocab.encode(["a", "dog", "runs"]) + [0, 0]) == ["a", "dog", "runs"]


def test_save_and_load(tmp_path: Path) -> None:
    vocab = Vocabulary.build([["x", "y"]], freq_threshold=1, max_vocab=10)
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded.itos == vocab.itos and loaded.max_vocab == 10


def test_load_rejects_other_json(tmp_path: Path) -> None:
    (tmp_path / "v.json").write_text('{"hello": 1}')
    with pytest.raises(CaptionerError, match="not a captioner vocabulary"):
        Vocabulary.load(tmp_path / "v.json")
    with pytest.raises(CaptionerError, match="does not exist"):
        Vocabulary.load(tmp_path / "missing.json")


def test_vocabulary_of_only_specials_still_encodes() -> None:
    vocab = Vocabulary.build([])
    assert len(vocab) == 4
    assert vocab.decode(vocab.encode(["anything"])) == ["<unk>"]
