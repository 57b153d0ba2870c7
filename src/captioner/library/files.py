"""The photo files of a library, reached by id only: a stored path that would lead outside the photo folder
(`..`, an absolute path, a symlink pointing out) is refused, so the server never serves another file."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from captioner.io import atomic_write_bytes

THUMBNAIL_SIDE = 320
THUMBNAILS = "thumbnails"


def photo_file(root: Path, relative: str) -> Path | None:
    """The photo at `relative` under `root`, or None when it is not a file inside the root (after symlinks)."""
    parts = PurePosixPath(relative)
    if parts.is_absolute() or ".." in parts.parts or not relative:
        return None
    path = root.joinpath(*parts.parts)
    try:
        real, real_root = path.resolve(strict=True), root.resolve(strict=True)
    except OSError:
        return None
    if not real.is_relative_to(real_root) or not real.is_file():
        return None
    return real


def thumbnail(library: Path, photo: Path, sha256: str) -> Path:
    """A JPEG at most THUMBNAIL_SIDE on its long side, made once per content (moves and copies share it),
    written atomically into the library's thumbnails folder."""
    target = library / THUMBNAILS / sha256[:2] / f"{sha256}.jpg"
    if target.is_file():
        return target
    from io import BytesIO

    from captioner.images import open_rgb

    image = open_rgb(photo, name=str(photo), draft_size=THUMBNAIL_SIDE)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=82)
    os.makedirs(target.parent, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return target
