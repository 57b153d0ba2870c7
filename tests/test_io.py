import os
import stat
from pathlib import Path

import pytest

from captioner.errors import CaptionerError
from captioner.io import atomic_write_text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_umask_permissions_not_a_temporary_files_0600(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "page.html", "<p>hi</p>")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "page.html") == 0o644


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "captions.txt"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["captions.txt"]  # no temporary file left behind


def test_a_file_where_a_folder_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("a file")
    with pytest.raises(CaptionerError, match=r"out\.txt is a file, not a folder"):
        atomic_write_text(tmp_path / "out.txt" / "deeper" / "captions.txt", "x")
    assert (tmp_path / "out.txt").read_text() == "a file"
