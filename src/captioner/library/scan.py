"""Which photos a library holds now: the image files under its root, found by walking the folders given
(symlinked folders followed once, loops noticed), each with what tells a changed file from an unchanged one."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from captioner.data.records import IMAGE_EXTENSIONS
from captioner.errors import CaptionerError

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class PhotoFile:
    path: str  # relative to the root, '/'-separated
    size: int
    mtime_ns: int


@dataclass
class Scan:
    photos: list[PhotoFile]
    loops: list[str]  # symlinked folders not followed because they lead back to a folder already walked
    outside: list[str]  # symlinks leading out of the photo folder: not indexed, as the library never serves them


def relative_name(path: Path, root: Path) -> str:
    """`path` (absolute) as the library stores it; a clear error for a photo outside the root."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise CaptionerError(f"{path} is outside the library's photo folder {root}; index it into a library "
                             "of its own (--library), or make the library at a folder holding both") from None


def scan(arguments: list[Path], root: Path, skip: Path | None = None) -> Scan:
    """Every image file named or under a folder named, once each, sorted by path. `skip` (the library's own
    folder, with its thumbnails) is never walked."""
    found: dict[str, PhotoFile] = {}
    loops: list[str] = []
    outside: list[str] = []
    for argument in arguments:
        absolute = Path(os.path.abspath(argument))
        if absolute.is_dir():
            for path in _walk(absolute, skip, loops, outside, root.resolve()):
                _add(found, path, root)
        elif absolute.is_file():
            if absolute.suffix.lower() not in IMAGE_EXTENSIONS:
                raise CaptionerError(f"{argument} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            _add(found, absolute, root)
        else:
            raise CaptionerError(f"{argument} does not exist")
    return Scan([found[name] for name in sorted(found)], loops, outside)


def _add(found: dict[str, PhotoFile], path: Path, root: Path) -> None:
    try:
        stat = path.stat()
    except OSError:  # deleted (or a broken symlink) between listing and reading: it is simply not there
        return
    name = relative_name(path, root)
    found[name] = PhotoFile(name, stat.st_size, stat.st_mtime_ns)


def _walk(top: Path, skip: Path | None, loops: list[str], outside: list[str], real_root: Path) -> Iterator[Path]:
    """Image files under `top`, following symlinked folders unless they lead to a folder already on the way
    (a loop) or already walked, or out of the photo folder."""
    seen: set[tuple[int, int]] = set()
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            stat = folder.stat()
        except OSError:
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            loops.append(str(folder))
            continue
        seen.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") or (skip is not None and path == skip):
                continue  # hidden files and folders (.git, .captioner, ._ files) are not photos
            try:
                if entry.is_symlink() and not path.resolve().is_relative_to(real_root):
                    outside.append(str(path))
                    continue
                if entry.is_dir():
                    pending.append(path)
                elif entry.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                    yield path
            except OSError:
                continue


def content_hash(path: Path) -> str | None:
    """sha256 of the file, or None when it cannot be read (deleted since the scan)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()
