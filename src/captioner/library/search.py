"""Finding photos by what they show, in two stages.

First, BM25 (SQLite FTS5) over every photo's stored captions and tags picks the candidates: fast, and blind to
anything the captions did not say. Then the captioning model itself reranks them by how likely it finds the
query as a caption of each photo, log P(query | photo), read from the stored features: one teacher-forced
pass over at most `candidates` photos. A library no larger than `candidates` is reranked whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from captioner.data.vocab import clean_caption
from captioner.decoding.likelihood import caption_log_likelihood
from captioner.errors import CaptionerError
from captioner.library.browse import TAGGED
from captioner.library.database import LibraryDatabase
from captioner.library.feature_file import FeatureFile
from captioner.library.indexer import feature_path, feature_shape_key, photo_root
from captioner.models.loading import TrainedModel, load_model

CANDIDATES = 100
RERANK_BATCH = 100


@dataclass
class Hit:
    id: int
    path: str  # relative to the library's photo root
    caption: str
    score: float  # log P(query | photo) when reranked, else the BM25 score (higher is better either way)
    reranked: bool


@dataclass
class SearchResults:
    query: str
    hits: list[Hit] = field(default_factory=list)
    unknown_words: list[str] = field(default_factory=list)  # words the model's vocabulary lacks
    candidates: int = 0  # photos the first stage passed on


@dataclass
class Filters:
    folder: str | None = None  # relative to the photo root
    tag: str | None = None
    after: str | None = None  # YYYY-MM-DD, inclusive; the EXIF date where the photo has one, else its mtime
    before: str | None = None

    def sql(self) -> tuple[str, list[object]]:
        clauses, values = ["i.removed_at IS NULL", "i.error IS NULL"], []
        if self.folder:
            folder = self.folder.strip("/")
            clauses.append("(i.path LIKE ? ESCAPE '\\')")
            values.append(folder.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%")
        if self.tag:
            clauses.append("EXISTS (SELECT 1 FROM tags t WHERE t.image_id = i.id AND t.tag = ? AND t.probability >= ?)")
            values += [self.tag, TAGGED]
        date = "substr(COALESCE(i.taken, strftime('%Y-%m-%dT%H:%M:%S', i.mtime_ns / 1e9, 'unixepoch')), 1, 10)"
        if self.after:
            clauses.append(f"{date} >= ?")
            values.append(self.after)
        if self.before:
            clauses.append(f"{date} <= ?")
            values.append(self.before)
        return " AND ".join(clauses), values


class Library:
    """A library folder, opened for searching: `Library(DIR).search("a dog on the beach")`."""

    def __init__(self, folder: str | Path, model: TrainedModel | None = None, device: str | None = None) -> None:
        self.folder = Path(folder)
        self.database = LibraryDatabase.open(self.folder)
        self._model, self._device = model, device
        # the model reranking and the identity of its features: fixed once chosen, so that an index run with
        # another model meanwhile never pairs this decoder with another model's features
        self._model_id: str | None = self.database.meta().get("model") if model is not None else None
        self._features: FeatureFile | None = None

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def use_model(self, model: TrainedModel) -> None:
        """Rerank with this already loaded model (the one that indexed the library) instead of loading it."""
        self._model, self._model_id = model, self.database.meta().get("model")

    @property
    def root(self) -> Path:
        return photo_root(self.database)

    @property
    def model(self) -> TrainedModel:
        """The model that described the library, loaded on first use (it reranks)."""
        if self._model is None:
            meta = self.database.meta()
            if "model_path" not in meta:
                raise CaptionerError(f"the library {self.folder} holds no photos yet; run `captioner index` first")
            path = Path(meta["model_path"])
            if not path.exists():
                raise CaptionerError(f"the library {self.folder} was indexed with {path}, which is gone; index it "
                                     "again with a model that exists (`captioner index --model_path M`)")
            self._model, self._model_id = load_model(path, self._device), meta["model"]
        return self._model

    def search(self, text: str, top_k: int = 20, candidates: int = CANDIDATES, filters: Filters | None = None,
               rerank: bool = True) -> SearchResults:
        words = clean_caption(text)
        if not words:
            raise CaptionerError(f"the query {text!r} has no words to search for")
        if top_k < 1 or candidates < 1:
            raise ValueError("top_k and candidates must be at least 1")
        results = SearchResults(text)
        where, values = (filters or Filters()).sql()
        db = self.database.connection
        eligible = db.execute(f"SELECT COUNT(*) FROM images i WHERE {where}", values).fetchone()[0]
        if eligible <= candidates and rerank:
            rows = db.execute(f"SELECT i.id, i.path, 0.0 FROM images i WHERE {where} ORDER BY i.path", values)
        else:
            match = " OR ".join(f'"{word}"' for word in dict.fromkeys(words))
            rows = db.execute(
                f"SELECT i.id, i.path, -bm25(search_text, 1.0, 0.5) FROM search_text JOIN images i ON i.id = "
                f"search_text.rowid WHERE search_text MATCH ? AND {where} ORDER BY bm25(search_text, 1.0, 0.5) "
                f"LIMIT ?", [match, *values, candidates])
        found = [(int(i), str(path), float(score)) for i, path, score in rows]
        results.candidates = len(found)
        captions = self._best_captions([i for i, _, _ in found])
        if rerank and found:
            vocab = self.model.vocab
            results.unknown_words = [word for word in dict.fromkeys(words) if word not in vocab.stoi]
            scores = self._likelihoods([i for i, _, _ in found], vocab.encode(words))
            hits = [Hit(i, path, captions.get(i, ""), scores[i], True) if i in scores
                    else Hit(i, path, captions.get(i, ""), score, False) for i, path, score in found]
            hits.sort(key=lambda hit: (not hit.reranked, -hit.score))
        else:
            hits = [Hit(i, path, captions.get(i, ""), score, False) for i, path, score in found]
        results.hits = hits[:top_k]
        return results

    def _best_captions(self, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.database.connection.execute(
            f"SELECT image_id, text FROM captions WHERE rank = 1 AND image_id IN ({marks})", ids)
        return dict(rows)

    def _likelihoods(self, ids: list[int], tokens: list[int]) -> dict[int, float]:
        """log P(query | photo) for the photos described by the library's current model (the others have no
        features of it)."""
        decoder, device = self.model.decoder, self.model.device
        model_id = self._model_id
        marks = ",".join("?" * len(ids))
        rows = self.database.connection.execute(
            f"SELECT id, feature_row FROM images WHERE model = ? AND feature_row IS NOT NULL AND id IN ({marks})",
            [model_id, *ids]).fetchall()
        if not rows:
            return {}
        features = self._feature_file(model_id)
        scores: dict[int, float] = {}
        for start in range(0, len(rows), RERANK_BATCH):
            chunk = rows[start:start + RERANK_BATCH]
            grid = features.read([row for _, row in chunk]).to(device)
            captions = torch.tensor([tokens] * len(chunk), device=device)
            likelihood = caption_log_likelihood(decoder, grid, captions)
            scores.update({image_id: float(value) for (image_id, _), value in zip(chunk, likelihood.tolist())})
        return scores

    def _feature_file(self, model_id: str) -> FeatureFile:
        if self._features is None:
            shape = self.database.meta().get(feature_shape_key(model_id))
            if shape is None:
                raise CaptionerError(f"the library {self.folder} has no features of its model; index it again")
            self._features = FeatureFile(feature_path(self.folder, model_id), tuple(map(int, shape.split("x"))))
        return self._features
