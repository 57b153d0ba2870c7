"""Read the text files real datasets ship: BOMs, CRLF, and lines that are not UTF-8."""

from __future__ import annotations

from pathlib import Path

from captioner.data.records import LoadReport
from captioner.errors import CaptionerError

NOT_UTF8 = "lines not valid UTF-8, read as Windows-1252"


def decode_line(raw: bytes, report: LoadReport, where: str) -> str:
    """UTF-8 first; a line in another encoding is read as Windows-1252 (Latin-1 for its 5 holes) and counted."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        report.repair(NOT_UTF8, where)
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def read_lines(path: Path, report: LoadReport) -> list[str]:
    """All lines of a text file, without line ends or a byte-order mark; line i is at index i - 1."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CaptionerError(f"cannot read {path}: {error.strerror or error}") from error
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [decode_line(raw.rstrip(b"\r"), report, f"{path.name}:{number}") for number, raw in enumerate(lines, 1)]
