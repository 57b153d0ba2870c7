"""Atomic file writes: a crash or a full disk leaves the previous file intact, never a half-written one."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from captioner.errors import CaptionerError


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path` in one step.

    The file gets the permissions a plain open() would give it: those of the file it replaces, else the
    umask's (a temporary file's own 0600 would hide a published page from the web server)."""
    handle = None
    try:
        _make_folder(path)
        handle = _temporary_beside(path)
        _keep_mode(path, handle.name)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
        _sync_folder(path.parent)
    except BaseException as error:
        if handle is not None:
            handle.close()  # a no-op when `with handle` closed it
            with contextlib.suppress(OSError):
                os.unlink(handle.name)
        if isinstance(error, OSError):
            raise CaptionerError(f"could not write {path}: {error.strerror or error}; "
                                 "the previous version (if any) is untouched") from error
        raise


def check_writable(path: Path) -> None:
    """Fail now, with a clear message, where a file could not be written later: before minutes of work whose
    result would then be lost."""
    if path.is_dir():
        raise CaptionerError(f"{path} is a folder; name the file to write")
    ancestor = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    if not ancestor.is_dir():
        raise CaptionerError(f"cannot write {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CaptionerError(f"cannot write {path}: no permission to write into {ancestor}")


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((folder for folder in reversed(path.parents) if folder.exists() and not folder.is_dir()),
                        path.parent)
        raise CaptionerError(f"could not write {path}: {blocking} is a file, not a folder") from None


def _temporary_beside(path: Path) -> BinaryIO:
    """A new file in path's folder, created as open() creates files (mode 0666 less the umask; tempfile's are
    0600)."""
    for _ in range(100):
        with contextlib.suppress(FileExistsError):
            return open(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp", "xb")  # noqa: SIM115
    raise FileExistsError(f"no free temporary name beside {path}")


def _keep_mode(path: Path, temporary: str) -> None:
    """The replacement gets the mode of the file it replaces, if there is one."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (it lives in the folder's entry list), where the OS allows it."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
