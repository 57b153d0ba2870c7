"""Finding photos by what they show, in two stages.

First the candidates: the photos nearest the query in the model's text-image embedding (one matrix product over
the stored embeddings), or for models without one BM25 (SQLite FTS5) over the stored captions and tags. Then
the captioning model reranks them from the stored features: how likely it finds the query as a caption of each
photo, log P(query | photo), plus the embedding's cosine and the concept head's belief in the query's concepts,
each weighted as dev chose. A library no larger than `candidates` is reranked whole.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch
from torch.nn import functional

from captioner.data.vocab import clean_caption
from captioner.decoding.likelihood import caption_log_likelihood
from captioner.devices import autocast
from captioner.errors import CaptionerError
from captioner.library.browse import TAGGED
from captioner.library.database import LibraryDatabase
from captioner.library.feature_file import FeatureFile
from captioner.library.indexer import embedding_path, feature_path, feature_shape_key, photo_root
from captioner.models.loading import TrainedModel, load_model

CANDIDATES = 50  # dev: 30 to 100 candidates give the same recall within 0.1; 50 halves the reranking of 100
EMBEDDING_WEIGHT = 60.0  # chosen on dev (benchmarks/retrieval.py --split dev --sweep)
CONCEPT_WEIGHT = 2.0  # chosen on dev, likewise (2 and 3 within noise with one embedding; 2 with the ensemble)
# log P counts per word, scaled to a typical query's length (Flickr8k's references: 11 words and <end>), so
# that the weights above mean the same for short and long queries; dev R@1 31.5 -> 32.2 (docs/results.md 5.22)
TYPICAL_QUERY_TOKENS = 12
RERANK_BATCH = 100


@dataclass
class Hit:
    id: int
    path: str  # relative to the library's photo root
    caption: str
    score: float  # combined() when reranked, else the first stage's score (higher is better either way)
    reranked: bool


@dataclass(frozen=True)
class Evidence:
    """What the reranking reads of one photo for one query."""
    likelihood: float  # log P(query | photo) under the captioning model
    concepts: float  # mean log P(concept | photo) over the query's concepts (0 without a concept head or any)
    tokens: int = 1  # the words scored, <end> included


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

    def __post_init__(self) -> None:
        for name in ("after", "before"):
            value = getattr(self, name)
            if value is not None and not _is_date(value):
                raise CaptionerError(f"{name} {value}: expected a date as YYYY-MM-DD")

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


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def combined(evidence: Evidence, cosine: float, embedding_weight: float, concept_weight: float) -> float:
    """The reranking's score: log P(query | photo) per word x TYPICAL_QUERY_TOKENS + w x cosine + v x concept
    score. Unscaled, log P grows with the query's length while the other two do not, so long queries were
    ranked by the decoder almost alone and short ones by the embedding."""
    likelihood = evidence.likelihood * TYPICAL_QUERY_TOKENS / max(evidence.tokens, 1)
    return likelihood + embedding_weight * cosine + concept_weight * evidence.concepts


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
        self._embeddings: FeatureFile | None = None
        self._embedding_matrix: torch.Tensor | None = None
        self._embedding_version: tuple[int, int, int] | None = None

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def use_model(self, model: TrainedModel) -> None:
        """Rerank with this already loaded model (the one that indexed the library) instead of loading it."""
        self._model, self._model_id = model, self.database.meta().get("model")
        self._features = self._embeddings = None

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
               rerank: bool = True, embedding_weight: float | None = None, concept_weight: float | None = None
               ) -> SearchResults:
        """The `top_k` best photos for `text`. `rerank=False`: the first stage alone, BM25 (no model loaded).
        `embedding_weight`, `concept_weight`: how much the embedding's cosine and the concept score count beside
        log P(query | photo) (default: the weights chosen on dev)."""
        words = clean_caption(text)
        if not words:
            raise CaptionerError(f"the query {text!r} has no words to search for")
        if top_k < 1 or candidates < 1:
            raise ValueError("top_k and candidates must be at least 1")
        weight = EMBEDDING_WEIGHT if embedding_weight is None else embedding_weight
        concept_weight = CONCEPT_WEIGHT if concept_weight is None else concept_weight
        results = SearchResults(text)
        where, values = (filters or Filters()).sql()
        similarity: dict[int, float] = {}
        if rerank:
            vocab = self.model.vocab
            results.unknown_words = [word for word in dict.fromkeys(words) if word not in vocab.stoi]
            similarity = self.similarities(words, where, values)
        found = self._first_stage(words, where, values, candidates, similarity, rerank)
        results.candidates = len(found)
        captions = self._best_captions([i for i, _, _ in found])
        if rerank and found:
            evidence = self.evidence([i for i, _, _ in found], words)
            hits = [Hit(i, path, captions.get(i, ""), combined(evidence[i], similarity.get(i, 0.0), weight,
                                                              concept_weight), True)
                    if i in evidence else Hit(i, path, captions.get(i, ""), score, False) for i, path, score in found]
            hits.sort(key=lambda hit: (not hit.reranked, -hit.score))
        else:
            hits = [Hit(i, path, captions.get(i, ""), score, False) for i, path, score in found]
        results.hits = hits[:top_k]
        return results

    def _first_stage(self, words: list[str], where: str, values: list[object], candidates: int,
                     similarity: dict[int, float], rerank: bool) -> list[tuple[int, str, float]]:
        """(id, path, score) of the photos the reranking reads: every eligible photo of a library no larger than
        `candidates`, else those the embedding finds nearest the query (models with one), else BM25's best."""
        db = self.database.connection
        eligible = db.execute(f"SELECT COUNT(*) FROM images i WHERE {where}", values).fetchone()[0]
        if eligible <= candidates and rerank:
            rows = db.execute(f"SELECT i.id, i.path, 0.0 FROM images i WHERE {where} ORDER BY i.path", values)
            return [(int(i), str(path), float(score)) for i, path, score in rows]
        if similarity:
            nearest = heapq.nlargest(candidates, similarity.items(), key=lambda item: item[1])
            paths = self._paths([i for i, _ in nearest])
            return [(i, paths[i], score) for i, score in nearest]
        match = " OR ".join(f'"{word}"' for word in dict.fromkeys(words))
        rows = db.execute(
            f"SELECT i.id, i.path, -bm25(search_text, 1.0, 0.5) FROM search_text JOIN images i ON i.id = "
            f"search_text.rowid WHERE search_text MATCH ? AND {where} ORDER BY bm25(search_text, 1.0, 0.5) "
            f"LIMIT ?", [match, *values, candidates])
        return [(int(i), str(path), float(score)) for i, path, score in rows]

    def _paths(self, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return dict(self.database.connection.execute(f"SELECT id, path FROM images WHERE id IN ({marks})", ids))

    def _best_captions(self, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.database.connection.execute(
            f"SELECT image_id, text FROM captions WHERE rank = 1 AND image_id IN ({marks})", ids)
        return dict(rows)

    def similarities(self, words: list[str], where: str = "1", values: list[object] | None = None
                     ) -> dict[int, float]:
        """Cosine between the query's and each eligible photo's embedding; empty for a model without one."""
        embedding = self.model.embedding
        model_id = self._model_id
        if embedding is None or not self.database.meta().get(feature_shape_key(model_id)):
            return {}
        rows = self.database.connection.execute(
            f"SELECT i.id, i.feature_row FROM images i WHERE {where} AND i.model = ? AND i.feature_row IS NOT NULL",
            [*(values or []), model_id]).fetchall()
        if not rows:
            return {}
        photos = self._photo_embeddings(model_id, embedding.vector_dim, max(row for _, row in rows) + 1)
        if photos is None:
            return {}
        device = next(embedding.parameters()).device
        with torch.no_grad():
            query = embedding.embed_text_input(embedding.text_inputs([words], self.model.vocab, device))
        cosines = (photos @ query[0].cpu().float())[torch.tensor([row for _, row in rows])].tolist()
        return {image_id: cosine for (image_id, _), cosine in zip(rows, cosines)}

    def _photo_embeddings(self, model_id: str, dim: int, needed: int) -> torch.Tensor | None:
        """Every photo's embedding (rows, dim) float32, read again only when the file changed (an index run
        wrote to it): a 10,000-photo library would otherwise read 5 MB from the file on every query."""
        if self._embeddings is None:
            self._embeddings = FeatureFile(embedding_path(self.folder, model_id), (dim,))
            self._embedding_matrix = None
        try:
            status = self._embeddings.path.stat()
        except FileNotFoundError:
            return None
        version = (status.st_ino, status.st_size, status.st_mtime_ns)
        if self._embedding_matrix is None or self._embedding_version != version:
            # every row up to the last the database refers to: FeatureFile.read names a file cut short
            count = max(self._embeddings.rows, needed)
            self._embedding_matrix = self._embeddings.read(list(range(count))).float()
            self._embedding_version = version
        return self._embedding_matrix

    def likelihoods(self, ids: list[int], words: list[str]) -> dict[int, float]:
        """log P(query | photo) for the photos described by the library's current model (the others have no
        features of it)."""
        return {image_id: found.likelihood for image_id, found in self.evidence(ids, words).items()}

    def evidence(self, ids: list[int], words: list[str]) -> dict[int, Evidence]:
        """The likelihood and concept scores of the photos described by the library's current model, from one
        read of their features."""
        decoder, device = self.model.decoder, self.model.device
        concepts = self.model.concepts
        concept_ids = concepts.ids_of(words) if concepts is not None and decoder.concept_head is not None else []
        tokens = self.model.vocab.encode(words)
        model_id = self._model_id
        marks = ",".join("?" * len(ids))
        rows = self.database.connection.execute(
            f"SELECT id, feature_row FROM images WHERE model = ? AND feature_row IS NOT NULL AND id IN ({marks})",
            [model_id, *ids]).fetchall()
        if not rows:
            return {}
        features = self._feature_file(model_id)
        found: dict[int, Evidence] = {}
        for start in range(0, len(rows), RERANK_BATCH):
            chunk = rows[start:start + RERANK_BATCH]
            captions = torch.tensor([tokens] * len(chunk), device=device)
            belief = [0.0] * len(chunk)
            with torch.no_grad(), autocast(device):  # the grid cast once, for the decoder and the concept head
                grid = decoder.prepare(features.read([row for _, row in chunk]).to(device))
                likelihood = caption_log_likelihood(decoder, grid, captions).tolist()
                if concept_ids:
                    belief = functional.logsigmoid(decoder.concept_logits(grid))[:, concept_ids].mean(1).tolist()
            found.update({image_id: Evidence(value, concept, len(tokens) - 1)
                          for (image_id, _), value, concept in zip(chunk, likelihood, belief)})
        return found

    def _feature_file(self, model_id: str) -> FeatureFile:
        if self._features is None:
            shape = self.database.meta().get(feature_shape_key(model_id))
            if shape is None:
                raise CaptionerError(f"the library {self.folder} has no features of its model; index it again")
            self._features = FeatureFile(feature_path(self.folder, model_id), tuple(map(int, shape.split("x"))))
        return self._features
