"""A small photo collection (the tiny model's shapes images in two folders) and the model that indexes it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from captioner.api import Captioner
from captioner.library.indexer import IndexReport, index, library_location, model_identity


def collection(checkpoint: Path, folder: Path, count: int = 10) -> Path:
    """`count` shapes images copied into folder/a and folder/b/c (as JPEG files a photo collection holds)."""
    images = sorted((checkpoint.parents[2] / "shapes").rglob("*.png"))[:count]
    for number, image in enumerate(images):
        target = folder / ("a" if number % 2 else "b/c") / f"photo{number:02d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    return folder


def run_index(checkpoint: Path, photos: Path, batch_size: int = 4, **options) -> IndexReport:
    folder, root = library_location([photos], options.pop("library", None))
    captioner = options.pop("captioner", None) or Captioner.load(checkpoint, "cpu")
    return index([photos], captioner, model_identity(checkpoint), folder, root, batch_size=batch_size,
                 progress_bar=False, say=lambda line: None, **options)


def rows(library: Path) -> dict[str, tuple]:
    """What the database says about each present photo: its file, captions and tags (no ids, no times)."""
    connection = sqlite3.connect(library / "library.sqlite")
    found = {}
    for image_id, path, size, digest, width, height in connection.execute(
            "SELECT id, path, size, sha256, width, height FROM images WHERE removed_at IS NULL"):
        captions = connection.execute("SELECT rank, text, round(score, 4) FROM captions WHERE image_id = ? "
                                      "ORDER BY rank", (image_id,)).fetchall()
        tags = connection.execute("SELECT tag, round(probability, 4) FROM tags WHERE image_id = ? ORDER BY tag",
                                  (image_id,)).fetchall()
        text = connection.execute("SELECT captions, tags FROM search_text WHERE rowid = ?", (image_id,)).fetchone()
        found[path] = (size, digest, width, height, tuple(captions), tuple(tags), text)
    connection.close()
    return found
