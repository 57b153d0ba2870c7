"""`captioner index`: caption and tag every photo of a collection once, and afterwards only what changed.

A run compares the files on disk with the database: unchanged files (same size and mtime) are left alone; a
file whose size or mtime changed is hashed, and captioned again only if its content did; a new file with the
content of one that vanished is that file moved (its row follows it); a copy of a described file takes its
twin's description; files gone are marked removed. What is left is captioned in batches, each batch one
transaction, so a run killed at any moment loses at most the batch in flight.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from PIL import Image

from captioner.api import Captioner, CaptionResult
from captioner.decoding.settings import DecodeSettings
from captioner.errors import CaptionerError
from captioner.library.database import LibraryDatabase, StoredImage
from captioner.library.feature_file import FeatureFile
from captioner.library.scan import PhotoFile, content_hash, scan
from captioner.library.sharing import describe_shared, share_work
from captioner.training.distributed import Processes

LIBRARY_FOLDER = ".captioner"
EXIF_DATE_TIME_ORIGINAL, EXIF_DATE_TIME, EXIF_IFD = 36867, 306, 34665


@dataclass
class Work:
    """What a run has to do, decided before any image is captioned."""

    caption: list[tuple[PhotoFile, str]] = field(default_factory=list)  # (file, its sha256)
    unchanged: int = 0
    touched: list[tuple[StoredImage, PhotoFile]] = field(default_factory=list)  # same content, new size/mtime
    moved: list[tuple[StoredImage, PhotoFile]] = field(default_factory=list)
    copied: list[tuple[StoredImage, PhotoFile]] = field(default_factory=list)  # (its twin, the copy)
    removed: list[StoredImage] = field(default_factory=list)
    vanished: int = 0  # listed, then gone before it could be hashed


@dataclass
class IndexReport:
    added: int = 0
    recaptioned: int = 0
    unreadable: int = 0
    work: Work = field(default_factory=Work)
    model_changed: bool = False
    seconds: float = 0.0


def model_identity(path: Path) -> str:
    """sha256 of the checkpoint (of every file of an exported bundle): another model, another identity."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def library_location(photos: list[Path], library: Path | None) -> tuple[Path, Path]:
    """(library folder, photo root) for a first run: PHOTOS/.captioner and PHOTOS by default; with --library,
    the folder holding every photo named as the root."""
    folders = [Path(os.path.abspath(p)) if Path(p).is_dir() else Path(os.path.abspath(p)).parent for p in photos]
    if not folders:
        raise CaptionerError("name the photos to index (files or folders)")
    if library is None:
        if len(folders) > 1 or not Path(photos[0]).is_dir():
            raise CaptionerError("with more than one folder, or with single files, say where the library goes: "
                                 "--library DIR")
        return folders[0] / LIBRARY_FOLDER, folders[0]
    return Path(os.path.abspath(library)), Path(os.path.commonpath(folders))


def photo_root(database: LibraryDatabase) -> Path:
    """The folder photo paths are relative to: stored relative to the library folder where it can be, so a
    collection moved together with its library keeps working."""
    root = database.meta().get("root")
    if root is None:  # made by a run killed before it recorded its photo folder
        raise CaptionerError(f"the library {database.path.parent} holds no photos yet; run `captioner index` first")
    return Path(os.path.normpath(database.path.parent / root))


def plan(database: LibraryDatabase, files: list[PhotoFile], root: Path, model: str, reindex: bool = False) -> Work:
    work = Work()
    stored = {image.path: image for image in database.stored_images()}
    present = {photo.path for photo in files}
    by_hash: dict[str, list[StoredImage]] = {}
    for image in stored.values():
        by_hash.setdefault(image.sha256, []).append(image)
    taken: set[int] = set()  # rows that already followed a moved file
    for photo in files:
        known = stored.get(photo.path)
        if known and not known.removed and (known.size, known.mtime_ns) == (photo.size, photo.mtime_ns):
            if known.model == model and not reindex:
                work.unchanged += 1
            else:
                work.caption.append((photo, known.sha256))
            continue
        digest = content_hash(root / photo.path)
        if digest is None:
            work.vanished += 1
            continue
        if known and known.sha256 == digest:
            if known.model == model and not reindex:
                work.touched.append((known, photo))
            else:
                work.caption.append((photo, digest))
            continue
        twins = [t for t in by_hash.get(digest, []) if t.path != photo.path and t.id not in taken]
        gone = [t for t in twins if t.path not in present and not (root / t.path).exists()]
        if known is None and gone:
            work.moved.append((gone[0], photo))
            taken.add(gone[0].id)
            if gone[0].model != model or reindex:
                work.caption.append((photo, digest))
            continue
        described = [t for t in twins if t.model == model and not t.removed]
        if described and not reindex:
            work.copied.append((described[0], photo))
        else:
            work.caption.append((photo, digest))
    # gone from disk, not merely outside the folders this run was given
    work.removed = [image for path, image in stored.items() if path not in present and not image.removed
                    and image.id not in taken and not (root / path).exists()]
    return work


def apply_bookkeeping(database: LibraryDatabase, work: Work) -> None:
    """Everything that needs no model, in one transaction: moves, touched files, copies, removals."""
    now = time.time()
    with database.transaction() as db:
        for image, photo in work.moved:
            db.execute("UPDATE images SET path = ?, size = ?, mtime_ns = ?, removed_at = NULL WHERE id = ?",
                       (photo.path, photo.size, photo.mtime_ns, image.id))
            _restore_search_text(db, image.id)  # a file that had been marked removed is searchable again
        for image, photo in work.touched:
            db.execute("UPDATE images SET size = ?, mtime_ns = ?, removed_at = NULL WHERE id = ?",
                       (photo.size, photo.mtime_ns, image.id))
            _restore_search_text(db, image.id)
        # every twin read before any row is replaced: a twin's own path may be a copy's destination (files
        # renumbered or swapped)
        described = {twin.id: _description(db, twin.id) for twin, _ in work.copied}
        for twin, photo in work.copied:
            image, captions, tags, text = described[twin.id]
            db.execute("DELETE FROM search_text WHERE rowid IN (SELECT id FROM images WHERE path = ?)", (photo.path,))
            db.execute("DELETE FROM images WHERE path = ?", (photo.path,))
            copy = db.execute("INSERT INTO images (path, size, mtime_ns, indexed_at, sha256, width, height, taken, "
                              "model, feature_row, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                              (photo.path, photo.size, photo.mtime_ns, now, *image)).lastrowid
            db.executemany("INSERT INTO captions VALUES (?, ?, ?, ?)", [(copy, *row) for row in captions])
            db.executemany("INSERT INTO tags VALUES (?, ?, ?)", [(copy, *row) for row in tags])
            if text is not None:
                db.execute("INSERT INTO search_text (rowid, captions, tags) VALUES (?, ?, ?)", (copy, *text))
        for image in work.removed:
            db.execute("UPDATE images SET removed_at = ? WHERE id = ?", (now, image.id))
            db.execute("DELETE FROM search_text WHERE rowid = ?", (image.id,))


def _description(db, image_id: int) -> tuple[tuple, list[tuple], list[tuple], tuple | None]:
    """What a copy takes from its twin: the image's description columns, its captions, tags and search row."""
    image = db.execute("SELECT sha256, width, height, taken, model, feature_row, error FROM images WHERE id = ?",
                       (image_id,)).fetchone()
    captions = db.execute("SELECT rank, text, score FROM captions WHERE image_id = ?", (image_id,)).fetchall()
    tags = db.execute("SELECT tag, probability FROM tags WHERE image_id = ?", (image_id,)).fetchall()
    text = db.execute("SELECT captions, tags FROM search_text WHERE rowid = ?", (image_id,)).fetchone()
    return image, captions, tags, text


def _restore_search_text(db, image_id: int) -> None:
    """The image's search row, built from its stored captions and tags (the one place that builds it)."""
    db.execute("DELETE FROM search_text WHERE rowid = ?", (image_id,))
    db.execute("INSERT INTO search_text (rowid, captions, tags) SELECT i.id, COALESCE((SELECT group_concat(text, "
               "' . ') FROM (SELECT text FROM captions WHERE image_id = i.id ORDER BY rank)), ''), COALESCE((SELECT "
               "group_concat(tag, ' ') FROM (SELECT tag FROM tags WHERE image_id = i.id ORDER BY probability DESC)),"
               " '') FROM images i WHERE i.id = ? AND i.error IS NULL", (image_id,))


def exif_taken(path: Path) -> str | None:
    """When the photo was taken, from its EXIF (DateTimeOriginal, else DateTime), as ISO 8601."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            value = exif.get_ifd(EXIF_IFD).get(EXIF_DATE_TIME_ORIGINAL) or exif.get(EXIF_DATE_TIME)
    except Exception:  # noqa: BLE001 - a photo without readable EXIF simply has no date
        return None
    try:
        return datetime.strptime(str(value).strip("\x00 "), "%Y:%m:%d %H:%M:%S").isoformat()
    except (TypeError, ValueError):
        return None


def store_batch(database: LibraryDatabase, features: FeatureFile | None, batch: list[tuple[PhotoFile, str]],
                results: list[CaptionResult], batch_features, root: Path, model: str,
                embeddings: tuple[FeatureFile, torch.Tensor] | None = None) -> tuple[int, int]:
    """One batch's descriptions in one transaction (features, and the photos' embeddings row for row beside
    them, written first); how many photos were unreadable, and how many were deleted after the scan (left out:
    the next run marks them removed)."""
    readable = [i for i, result in enumerate(results) if result.error is None]
    first_row = features.append(batch_features) if features is not None and readable else None
    if embeddings is not None and first_row is not None and embeddings[0].append(embeddings[1]) != first_row:
        raise CaptionerError(f"{embeddings[0].path} and {features.path} no longer hold the same photos' rows; "
                             "index the library again with --reindex")
    rows = {index: first_row + n for n, index in enumerate(readable)} if first_row is not None else {}
    now, unreadable, vanished = time.time(), 0, 0
    with database.transaction() as db:
        for index, ((photo, digest), result) in enumerate(zip(batch, results)):
            if result.error is not None and not (root / photo.path).exists():
                vanished += 1
                continue
            old = db.execute("SELECT id FROM images WHERE path = ?", (photo.path,)).fetchone()
            if old:
                db.execute("DELETE FROM search_text WHERE rowid = ?", (old[0],))
            width, height = result.size or (None, None)
            values = (photo.size, photo.mtime_ns, digest, width, height, exif_taken(root / photo.path)
                      if result.error is None else None, model, now, rows.get(index), result.error)
            if old:
                image_id = old[0]
                db.execute("UPDATE images SET size = ?, mtime_ns = ?, sha256 = ?, width = ?, height = ?, taken = ?,"
                           " model = ?, indexed_at = ?, feature_row = ?, error = ?, removed_at = NULL WHERE id = ?",
                           (*values, image_id))
                db.execute("DELETE FROM captions WHERE image_id = ?", (image_id,))
                db.execute("DELETE FROM tags WHERE image_id = ?", (image_id,))
            else:
                image_id = db.execute("INSERT INTO images (size, mtime_ns, sha256, width, height, taken, model,"
                                      " indexed_at, feature_row, error, path) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                      (*values, photo.path)).lastrowid
            if result.error is not None:
                unreadable += 1
                continue
            db.executemany("INSERT INTO captions VALUES (?, ?, ?, ?)",
                           [(image_id, rank, c.text, c.score) for rank, c in enumerate(result.captions, 1)])
            db.executemany("INSERT INTO tags VALUES (?, ?, ?)",
                           [(image_id, tag, probability) for tag, probability in result.tags])
            _restore_search_text(db, image_id)
    return unreadable, vanished


def feature_path(folder: Path, model: str) -> Path:
    return folder / f"features-{model[:16]}.f16"


def embedding_path(folder: Path, model: str) -> Path:
    """Each photo's text-image embedding (models trained with one), row for row beside its features."""
    return folder / f"embeddings-{model[:16]}.f16"


def feature_shape_key(model: str) -> str:
    """The meta entry holding the shape of one row of the model's feature file, as "81x1280"."""
    return f"feature_shape:{model[:16]}"


def open_features(database: LibraryDatabase, folder: Path, model: str, shape: tuple[int, ...]) -> FeatureFile:
    return FeatureFile.open(feature_path(folder, model), shape, database.feature_rows(model))


def open_embeddings(database: LibraryDatabase, folder: Path, model: str, dim: int) -> FeatureFile:
    return FeatureFile.open(embedding_path(folder, model), (dim,), database.feature_rows(model))


def embeds_both_views(captioner: Captioner, settings: DecodeSettings) -> bool:
    """Whether a photo's embedding averages it and its mirror image: when the decoding reads the mirror anyway."""
    return captioner.model.embedding is not None and settings.flip_average


def decode_settings(captioner: Captioner, num_captions: int) -> DecodeSettings:
    """The model's recommended decoding (beam 3 without one), so that the library's best caption is the one
    `captioner caption --recommended` writes; at most `num_captions` captions (beam search: one per beam)."""
    decoding = {"strategy": "beam", "beam_size": 3, **captioner.recommended_decoding}
    if decoding["strategy"] == "beam":
        num_captions = min(num_captions, int(decoding["beam_size"]))
    elif decoding["strategy"] == "greedy":
        num_captions = 1
    return DecodeSettings(**{**decoding, "num_captions": num_captions})


def index(photos: list[Path], captioner: Captioner, model: str, folder: Path, root: Path, *,
          batch_size: int = 64, num_captions: int = 3, reindex: bool = False, progress_bar: bool = True,
          say=print, processes: Processes = Processes()) -> IndexReport:
    """Bring the library at `folder` up to date with the photos under `photos` (all of `root` when empty).
    Under torchrun every process describes its share of each batch (`batch_size` photos per process) and the
    main process writes the database; the others return an empty report."""
    settings = decode_settings(captioner, num_captions)
    if not processes.is_main:
        shared = share_work(processes)
        if shared is None:  # the main process failed before the work was shared: it reports why
            return IndexReport()
        todo, root = shared
        step = batch_size * processes.world_size
        for start in range(0, len(todo), step):
            describe_shared(captioner, [(p.path, root / p.path) for p, _ in todo[start:start + step]], settings,
                            processes, embeds_both_views(captioner, settings))
        return IndexReport()
    started = time.monotonic()
    report = IndexReport()
    folder = Path(os.path.abspath(folder))
    shared = [False]  # set once the work went to the other processes
    try:
        with LibraryDatabase.open(folder, create=True) as database, writing(folder):
            _index_main(photos, captioner, model, folder, root, database, report, settings, batch_size, reindex,
                        progress_bar, say, processes, shared)
    finally:
        if not shared[0]:
            share_work(processes, None)  # failed before sharing: the other processes stop waiting
    report.seconds = time.monotonic() - started
    return report


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """One index run at a time per library: a second one would cut off the feature rows the first has written
    and not yet committed."""
    lock = open(folder / ".index.lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CaptionerError(f"another `captioner index` is writing the library {folder}; wait for it to end")
        yield
    finally:
        lock.close()


def _index_main(photos: list[Path], captioner: Captioner, model: str, folder: Path, root: Path,
                database: LibraryDatabase, report: IndexReport, settings: DecodeSettings, batch_size: int,
                reindex: bool, progress_bar: bool, say, processes: Processes, shared: list[bool]) -> None:
    """index() in the main process."""
    from captioner.progress import progress

    meta = database.meta()
    if "root" not in meta:
        with database.transaction() as db:
            database.set_meta(db, root=os.path.relpath(root, folder))
    root = photo_root(database)
    found = scan(photos or [root], root, skip=folder)
    for loop in found.loops:
        say(f"not followed: {loop} leads back to a folder already indexed (a symlink loop)")
    for link in found.outside:
        say(f"not indexed: {link} is a symlink out of the photo folder {root} (the library serves only its own)")
    previous = meta.get("model")
    report.model_changed = previous is not None and previous != model
    work = plan(database, found.photos, root, model, reindex)
    report.work = work
    if report.model_changed:
        stale = sum(1 for image in database.stored_images() if image.model != model and not image.removed)
        say(f"the library was indexed with another model ({meta.get('model_path', previous[:12])}); "
            f"describing its {stale} images again with {captioner.model.source}")
    apply_bookkeeping(database, work)
    with database.transaction() as db:
        database.set_meta(db, model=model, model_path=str(Path(captioner.model.source).resolve()))
    known = {image.path for image in database.stored_images()}
    features: FeatureFile | None = None
    embedding, embeddings = captioner.model.embedding, None
    views = embeds_both_views(captioner, settings)
    todo = work.caption
    share_work(processes, (todo, root))
    shared[0] = True
    step = batch_size * processes.world_size
    with progress(total=len(todo), unit="img", desc="indexing", enabled=progress_bar and bool(todo)) as bar:
        for start in range(0, len(todo), step):
            batch = todo[start:start + step]
            results, batch_features = describe_shared(
                captioner, [(photo.path, root / photo.path) for photo, _ in batch], settings, processes, views)
            viewed, batch_features = batch_features, (batch_features[:, 0] if views and batch_features is not None
                                                      else batch_features)
            if batch_features is not None and features is None:
                shape = tuple(batch_features.shape[1:])
                features = open_features(database, folder, model, shape)
                if embedding is not None:
                    embeddings = open_embeddings(database, folder, model, embedding.vector_dim)
                with database.transaction() as db:
                    database.set_meta(db, **{feature_shape_key(model): "x".join(map(str, shape))})
            batch_embeddings = None
            if embeddings is not None and batch_features is not None:
                batch_embeddings = (embeddings, embedding.embed_photos(viewed, views))
            unreadable, vanished = store_batch(database, features, batch, results, batch_features, root, model,
                                               batch_embeddings)
            report.unreadable += unreadable
            work.vanished += vanished
            stored = [photo for photo, _ in batch if (root / photo.path).exists()]
            report.recaptioned += sum(1 for photo in stored if photo.path in known)
            report.added += sum(1 for photo in stored if photo.path not in known)
            bar.update(len(batch))
