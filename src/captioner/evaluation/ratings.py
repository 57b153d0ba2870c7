"""Human ratings of generated captions, as the classic papers' human evaluation: fluency and relevance, 1 to 5.

One row per (image, aspect): rating fluency in one tab and relevance in another never overwrite each other,
and each rating is its own transaction (SQLite in WAL mode, so readers never block the writer).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import statistics
import time
from pathlib import Path

ASPECTS = ("fluency", "relevance")
DATABASE = "ratings.sqlite"


class RatingStore:
    def __init__(self, folder: Path) -> None:
        self.path = folder / DATABASE
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS ratings (image_id TEXT NOT NULL, aspect TEXT NOT NULL, "
                               "score INTEGER NOT NULL, updated REAL NOT NULL, PRIMARY KEY (image_id, aspect))")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def rate(self, image_id: str, aspect: str, score: int | None) -> None:
        """Set (or with score None, clear) one rating."""
        if aspect not in ASPECTS:
            raise ValueError(f"aspect must be one of {', '.join(ASPECTS)}")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5):
            raise ValueError(f"a rating is a whole number from 1 to 5, not {score!r}")
        connection = self._connect()
        try:
            with connection:  # one transaction: committed whole or not at all
                if score is None:
                    connection.execute("DELETE FROM ratings WHERE image_id = ? AND aspect = ?", (image_id, aspect))
                else:
                    connection.execute("INSERT INTO ratings VALUES (?, ?, ?, ?) ON CONFLICT (image_id, aspect) "
                                       "DO UPDATE SET score = excluded.score, updated = excluded.updated",
                                       (image_id, aspect, score, time.time()))
        finally:
            connection.close()

    def all(self) -> dict[str, dict[str, int]]:
        """image id -> {aspect: score}."""
        connection = self._connect()
        try:
            rows = connection.execute("SELECT image_id, aspect, score FROM ratings ORDER BY image_id").fetchall()
        finally:
            connection.close()
        ratings: dict[str, dict[str, int]] = {}
        for image_id, aspect, score in rows:
            ratings.setdefault(image_id, {})[aspect] = score
        return ratings


def summary(ratings: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Mean, count and standard deviation of each aspect."""
    result = {}
    for aspect in ASPECTS:
        scores = [r[aspect] for r in ratings.values() if aspect in r]
        result[aspect] = {"count": len(scores), "mean": statistics.fmean(scores) if scores else None,
                          "stdev": statistics.stdev(scores) if len(scores) > 1 else None}
    return result


def export_ratings(folder: Path, style: str, captions: dict[str, str]) -> str:
    """The ratings of an evaluation folder as CSV (one row per image, averages at the end) or JSON."""
    if not (folder / DATABASE).is_file():
        from captioner.errors import CaptionerError

        raise CaptionerError(f"{folder} has no ratings yet ({DATABASE}); rate captions in `captioner serve` first")
    ratings = RatingStore(folder).all()
    averages = summary(ratings)
    if style == "json":
        rows = [{"image_id": k, "caption": captions.get(k), **v} for k, v in ratings.items()]
        return json.dumps({"ratings": rows, "summary": averages}, indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image_id", "caption", *ASPECTS])
    for image_id, scores in ratings.items():
        writer.writerow([image_id, captions.get(image_id, ""), *(scores.get(a, "") for a in ASPECTS)])
    for name in ("mean", "count"):
        writer.writerow([name, "", *(_format(averages[a][name]) for a in ASPECTS)])
    return buffer.getvalue()


def _format(value: float | int | None) -> str:
    return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
