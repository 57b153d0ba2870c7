"""A library's SQLite database: one row per photo (where it is, what file it was, which model described it),
its captions and tags, and an FTS5 table over them for the first stage of search.

WAL mode, so searches read while an index run writes; every change is one transaction, so a run killed at
any moment leaves the database as it was after its last whole batch.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from captioner.errors import CaptionerError

FORMAT = "captioner-library"
VERSION = 1
DATABASE_NAME = "library.sqlite"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,          -- relative to the library's photo root, '/'-separated
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    taken TEXT,                         -- EXIF DateTimeOriginal as ISO 8601, where the photo has one
    model TEXT NOT NULL,                -- sha256 of the checkpoint that described it
    indexed_at REAL NOT NULL,           -- Unix time
    removed_at REAL,                    -- set when the file is gone (the row stays, for a file that comes back)
    feature_row INTEGER,                -- its row in the model's feature file
    error TEXT                          -- why it could not be read (then it has no captions)
);
CREATE INDEX images_sha256 ON images (sha256);
CREATE TABLE captions (
    image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,              -- 1 = best
    text TEXT NOT NULL,
    score REAL NOT NULL,                -- what the decoding ranked it by (summed log-probability for beam search)
    PRIMARY KEY (image_id, rank)
);
CREATE TABLE tags (
    image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    probability REAL NOT NULL,
    PRIMARY KEY (image_id, tag)
);
CREATE INDEX tags_tag ON tags (tag, probability);
CREATE VIRTUAL TABLE search_text USING fts5 (captions, tags, tokenize = 'porter unicode61');
"""


@dataclass(frozen=True)
class StoredImage:
    """What the index run compares a file on disk with."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    model: str
    removed: bool


class LibraryDatabase:
    """The open database of one library folder."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.connection = connection

    @classmethod
    def open(cls, folder: Path, create: bool = False) -> LibraryDatabase:
        """Open FOLDER/library.sqlite; with `create`, make the folder and database if absent. A file that is not
        a captioner library (another program's database, garbage, a newer format) is a clear error."""
        path = folder / DATABASE_NAME
        if not path.exists():
            if not create:
                raise CaptionerError(f"{folder} is not a captioner library (no {DATABASE_NAME}); "
                                     "make one with `captioner index PHOTOS --model_path M`")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise CaptionerError(f"cannot make the library folder {folder}: {error.strerror}") from error
        try:
            connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise CaptionerError(f"cannot open or make the library database {path}: {error}") from error
        try:
            connection.execute("PRAGMA foreign_keys = ON")
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            connection.close()
            raise CaptionerError(f"{path} is not a readable captioner library: {error}") from error
        database = cls(path, connection)
        try:
            if not tables and create:
                database._create()
                tables = {"meta", "images"}
            database._check(tables)
            if create:
                connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.OperationalError as error:
            connection.close()
            if "readonly" in str(error) or "unable to open" in str(error):
                raise CaptionerError(f"cannot write to the library {folder}: {error}") from error
            raise CaptionerError(f"{path} is not a readable captioner library: {error}") from error
        except BaseException:
            connection.close()
            raise
        return database

    def _create(self) -> None:
        with self.transaction():
            for statement in filter(str.strip, SCHEMA.split(";")):
                self.connection.execute(statement)
            self.connection.executemany("INSERT INTO meta VALUES (?, ?)",
                                        [("format", FORMAT), ("version", str(VERSION)),
                                         ("created_at", str(time.time()))])

    def _check(self, tables: set[str]) -> None:
        if "meta" not in tables or "images" not in tables:
            raise CaptionerError(f"{self.path} is an SQLite database but not a captioner library "
                                 f"(its tables: {', '.join(sorted(tables)) or 'none'})")
        meta = self.meta()
        if meta.get("format") != FORMAT:
            raise CaptionerError(f"{self.path} is an SQLite database but not a captioner library")
        if int(meta.get("version", 0)) > VERSION:
            raise CaptionerError(f"{self.path} was written by a newer captioner (library format "
                                 f"{meta['version']}, this one reads {VERSION}); upgrade captioner")

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> LibraryDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing: BEGIN IMMEDIATE takes the write lock at once, so two writers wait instead of failing
        half way."""
        try:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")
        except sqlite3.OperationalError as error:  # a full disk, a read-only file, a lock held too long
            raise CaptionerError(f"cannot write the library {self.path}: {error}") from error

    def meta(self) -> dict[str, str]:
        return dict(self.connection.execute("SELECT key, value FROM meta"))

    def set_meta(self, connection: sqlite3.Connection, **values: str) -> None:
        connection.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                               list(values.items()))

    def stored_images(self) -> list[StoredImage]:
        rows = self.connection.execute(
            "SELECT id, path, size, mtime_ns, sha256, model, removed_at IS NOT NULL FROM images")
        return [StoredImage(*row[:6], bool(row[6])) for row in rows]

    def feature_rows(self, model: str) -> int:
        """How many rows of the model's feature file the database refers to (the rest is a killed run's)."""
        row = self.connection.execute("SELECT MAX(feature_row) FROM images WHERE model = ?", (model,)).fetchone()
        return 0 if row[0] is None else row[0] + 1

    def counts(self) -> dict[str, int]:
        present, removed, failed = self.connection.execute(
            "SELECT COUNT(*) FILTER (WHERE removed_at IS NULL AND error IS NULL), "
            "COUNT(*) FILTER (WHERE removed_at IS NOT NULL), "
            "COUNT(*) FILTER (WHERE removed_at IS NULL AND error IS NOT NULL) FROM images").fetchone()
        return {"images": present, "removed": removed, "unreadable": failed}
