"""A library's descriptions as a table (CSV or JSON): for a photo manager, a spreadsheet or a web site."""

from __future__ import annotations

import csv
import io
import json

from captioner.alttext import as_sentence
from captioner.library.database import LibraryDatabase
from captioner.library.indexer import photo_root


def described_photos(database: LibraryDatabase) -> list[dict[str, object]]:
    """Every photo present and readable, by path: its best caption, the others, its tags and its alt text."""
    root = photo_root(database)
    db = database.connection
    captions: dict[int, list[str]] = {}
    for image_id, text in db.execute("SELECT image_id, text FROM captions ORDER BY image_id, rank"):
        captions.setdefault(image_id, []).append(text)
    tags: dict[int, list[tuple[str, float]]] = {}
    for image_id, tag, probability in db.execute(
            "SELECT image_id, tag, probability FROM tags ORDER BY image_id, probability DESC"):
        tags.setdefault(image_id, []).append((tag, probability))
    rows = []
    for image_id, path, width, height, taken in db.execute(
            "SELECT id, path, width, height, taken FROM images WHERE removed_at IS NULL AND error IS NULL "
            "ORDER BY path"):
        texts = captions.get(image_id, [])
        rows.append({"path": str(root / path), "caption": texts[0] if texts else "", "captions": texts,
                     "tags": [{"tag": tag, "probability": round(p, 4)} for tag, p in tags.get(image_id, [])],
                     "alt_text": as_sentence(texts[0]) if texts else "", "width": width, "height": height,
                     "taken": taken})
    return rows


def export_text(database: LibraryDatabase, style: str) -> str:
    rows = described_photos(database)
    if style == "json":
        return json.dumps(rows, indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "caption", "tags", "alt_text", "width", "height", "taken"])
    for row in rows:
        writer.writerow([row["path"], row["caption"], " ".join(t["tag"] for t in row["tags"]), row["alt_text"],
                         row["width"], row["height"], row["taken"] or ""])
    return buffer.getvalue()
