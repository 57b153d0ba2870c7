"""What the library page shows: pages of photos, the tags to filter them by, and one photo's description."""

from __future__ import annotations

from captioner.alttext import as_sentence
from captioner.library.database import LibraryDatabase

TAGGED = 0.25  # a photo counts as tagged with a concept (facets, --tag filters) from this probability on


def tag_facets(database: LibraryDatabase, limit: int = 40) -> list[tuple[str, int]]:
    """The most common tags of the present photos, with how many photos have each."""
    return database.connection.execute(
        "SELECT t.tag, COUNT(*) AS n FROM tags t JOIN images i ON i.id = t.image_id WHERE i.removed_at IS NULL "
        "AND t.probability >= ? GROUP BY t.tag ORDER BY n DESC, t.tag LIMIT ?", (TAGGED, limit)).fetchall()


def browse(database: LibraryDatabase, where: str, values: list[object], offset: int = 0, limit: int = 60
           ) -> tuple[int, list[dict[str, object]]]:
    """(photos matching, one page of them by path): id, best caption and alt text."""
    db = database.connection
    total = db.execute(f"SELECT COUNT(*) FROM images i WHERE {where}", values).fetchone()[0]
    rows = db.execute(
        f"SELECT i.id, i.path, (SELECT text FROM captions c WHERE c.image_id = i.id AND c.rank = 1) FROM images i "
        f"WHERE {where} ORDER BY i.path LIMIT ? OFFSET ?", [*values, limit, offset]).fetchall()
    return total, [{"id": i, "path": path, "caption": caption or "", "alt": as_sentence(caption or "")}
                   for i, path, caption in rows]


def details(database: LibraryDatabase, image_id: int) -> dict[str, object] | None:
    db = database.connection
    row = db.execute("SELECT path, width, height, taken, indexed_at FROM images WHERE id = ? AND removed_at IS NULL "
                     "AND error IS NULL", (image_id,)).fetchone()
    if row is None:
        return None
    path, width, height, taken, indexed_at = row
    captions = [{"text": text, "score": score} for text, score in db.execute(
        "SELECT text, score FROM captions WHERE image_id = ? ORDER BY rank", (image_id,))]
    tags = [{"tag": tag, "probability": p} for tag, p in db.execute(
        "SELECT tag, probability FROM tags WHERE image_id = ? ORDER BY probability DESC", (image_id,))]
    return {"id": image_id, "path": path, "width": width, "height": height, "taken": taken, "indexed_at": indexed_at,
            "captions": captions, "tags": tags, "alt": as_sentence(captions[0]["text"]) if captions else ""}
