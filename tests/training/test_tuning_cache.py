"""The kept tuned blocks: found under their key; anything else in their place is ignored, never an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioner.training.tuning_cache import load_tuning, save_tuning


def test_saved_blocks_come_back_under_their_key_only(tmp_path: Path) -> None:
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    save_tuning(tmp_path / "t.pt", "key", state, [{"epoch": 1}])
    loaded_state, history = load_tuning(tmp_path / "t.pt", "key")
    assert torch.equal(loaded_state["weight"], state["weight"]) and history == [{"epoch": 1}]
    assert load_tuning(tmp_path / "t.pt", "another key") is None


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04cut short"])
def test_a_damaged_or_foreign_file_is_ignored(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "t.pt").write_bytes(content)
    assert load_tuning(tmp_path / "t.pt", "key") is None
    assert load_tuning(tmp_path / "absent.pt", "key") is None


def test_a_file_with_the_key_but_not_the_blocks_is_ignored(tmp_path: Path) -> None:
    torch.save({"key": "key"}, tmp_path / "t.pt")
    assert load_tuning(tmp_path / "t.pt", "key") is None
