"""Search: the embedding's nearest photos (BM25 over the stored captions and tags without one), then the model's
own log P(query | photo) plus the weighted cosine; filters; the command and the Python API give the same answer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from captioner.api import Captioner
from captioner.cli.command import main
from captioner.data.vocab import clean_caption
from captioner.decoding.likelihood import caption_log_likelihood
from captioner.errors import CaptionerError
from captioner.library import Filters, Library
from captioner.library.browse import TAGGED
from captioner.library.indexer import decode_settings
from captioner.library.search import CONCEPT_WEIGHT, EMBEDDING_WEIGHT, TYPICAL_QUERY_TOKENS
from captioner.models.checkpoint import load_checkpoint
from tests.library.helpers import collection, run_index


@pytest.fixture(scope="module")
def library(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    photos = collection(tiny_checkpoint, tmp_path_factory.mktemp("search") / "photos", count=12)
    os.utime(photos / "a/photo01.png", ns=(0, 1_600_000_000 * 10**9))  # 2020-09-13
    run_index(tiny_checkpoint, photos)
    return photos / ".captioner"


def test_reranking_orders_the_photos_by_the_models_likelihood_of_the_query(tiny_checkpoint: Path,
                                                                          library: Path) -> None:
    query = "a red circle"
    with Library(library) as opened:
        results = opened.search(query, top_k=12, embedding_weight=0.0, concept_weight=0.0)
        fused = opened.search(query, top_k=12)
        similarity = opened.similarities(clean_caption(query))
        evidence = opened.evidence([hit.id for hit in fused.hits], clean_caption(query))
        root = opened.root
    assert len(results.hits) == 12 and all(hit.reranked for hit in results.hits)
    scores = [hit.score for hit in results.hits]
    assert scores == sorted(scores, reverse=True)
    captioner = Captioner.load(tiny_checkpoint, "cpu")
    best, worst = results.hits[0], results.hits[-1]
    _, features = captioner.describe_batch([(best.path, root / best.path), (worst.path, root / worst.path)],
                                           decode_settings(captioner, 3))
    tokens = torch.tensor([captioner.model.vocab.encode(clean_caption(query))] * 2)
    per_word = TYPICAL_QUERY_TOKENS / 4  # "a red circle" and <end>
    expected = caption_log_likelihood(captioner.model.decoder, features.half(), tokens) * per_word
    assert [best.score, worst.score] == pytest.approx(expected.tolist(), abs=0.05 * per_word)  # bf16, other batches
    assert all(found.tokens == 4 for found in evidence.values())
    assert best.caption and results.unknown_words == []
    likelihood = {hit.id: hit.score for hit in results.hits}
    assert all(found.concepts < 0 for found in evidence.values())  # "red" and "circle" are concepts
    assert similarity and [hit.score for hit in fused.hits] == pytest.approx(
        [likelihood[hit.id] + EMBEDDING_WEIGHT * similarity[hit.id] + CONCEPT_WEIGHT * evidence[hit.id].concepts
         for hit in fused.hits])


def test_without_an_embedding_the_first_stage_passes_on_only_photos_whose_captions_match(
        tiny_checkpoint: Path, tiny_transformer_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=12)
    run_index(tiny_transformer_checkpoint, photos)
    with Library(photos / ".captioner") as opened:
        word = opened.database.connection.execute("SELECT text FROM captions WHERE rank = 1").fetchone()[0].split()[-1]
        matching = {row[0] for row in opened.database.connection.execute(
            "SELECT rowid FROM search_text WHERE search_text MATCH ?", (f'"{word}"',))}
        results = opened.search(word, top_k=20, candidates=3)
    assert 0 < results.candidates <= 3 and {hit.id for hit in results.hits} <= matching
    assert all(hit.reranked for hit in results.hits)


def test_with_an_embedding_the_nearest_photos_are_reranked_by_likelihood_and_cosine(library: Path) -> None:
    query = "a red circle"
    with Library(library) as opened:
        cosine = opened.similarities(clean_caption(query))
        assert len(cosine) == 12 and all(-1.0001 <= value <= 1.0001 for value in cosine.values())
        nearest = sorted(cosine, key=cosine.get, reverse=True)[:3]
        results = opened.search(query, top_k=20, candidates=3, embedding_weight=2.0, concept_weight=0.0)
        likelihood = opened.likelihoods(nearest, clean_caption(query))
    assert results.candidates == 3 and {hit.id for hit in results.hits} == set(nearest)
    per_word = TYPICAL_QUERY_TOKENS / 4  # log P counts per word: "a red circle" and <end>
    expected = sorted((likelihood[i] * per_word + 2.0 * cosine[i] for i in nearest), reverse=True)
    assert [hit.score for hit in results.hits] == pytest.approx(expected)


def test_an_open_library_sees_the_photos_an_index_run_adds_after_its_first_search(tiny_checkpoint: Path,
                                                                                   tmp_path: Path) -> None:
    """Search keeps the photos' embeddings in memory; a server's open library must still see new photos."""
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=12)
    moved = tmp_path / "later"
    shutil.move(photos / "a", moved)
    run_index(tiny_checkpoint, photos)
    words = clean_caption("a red circle")
    with Library(photos / ".captioner") as opened:
        first = opened.similarities(words)
        shutil.move(moved, photos / "a")
        run_index(tiny_checkpoint, photos)
        again = opened.similarities(words)
    with Library(photos / ".captioner") as fresh:
        expected = fresh.similarities(words)
    assert len(first) == 6 and len(again) == 12 and again == pytest.approx(expected)


def test_an_embedding_file_cut_short_is_one_clear_message(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=4)
    run_index(tiny_checkpoint, photos)
    embeddings = next((photos / ".captioner").glob("embeddings-*.f16"))
    embeddings.write_bytes(embeddings.read_bytes()[: embeddings.stat().st_size // 2])
    with Library(photos / ".captioner") as opened, pytest.raises(CaptionerError, match="rows of features"):
        opened.similarities(clean_caption("a red circle"))


def test_filters_by_folder_tag_and_date(library: Path) -> None:
    with Library(library) as opened:
        assert {hit.path.split("/")[0] for hit in opened.search("a circle", filters=Filters(folder="b")).hits} == {"b"}
        tag = opened.database.connection.execute("SELECT tag FROM tags ORDER BY probability DESC").fetchone()[0]
        tagged = opened.search("a circle", filters=Filters(tag=tag)).hits
        assert tagged and all(opened.database.connection.execute(
            "SELECT 1 FROM tags WHERE image_id = ? AND tag = ? AND probability >= ?", (hit.id, tag, TAGGED)).fetchone()
            for hit in tagged)
        dated = opened.search("a circle", filters=Filters(after="2020-09-01", before="2020-09-30")).hits
        assert [hit.path for hit in dated] == ["a/photo01.png"]


def test_unknown_words_are_reported_and_still_searched(library: Path) -> None:
    with Library(library) as opened:
        results = opened.search("a zebra circle")
    assert results.unknown_words == ["zebra"] and results.hits
    with Library(library) as opened, pytest.raises(CaptionerError, match="no words"):
        opened.search("?!")


def test_the_command_prints_paths_and_captions(library: Path, capsys) -> None:
    assert main(["search", "a red circle", "--library", str(library), "--top_k", "3", "--format", "json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert len(output["results"]) == 3 and Path(output["results"][0]["path"]).is_file()
    with Library(library) as opened:
        api = [str(opened.root / hit.path) for hit in opened.search("a red circle", top_k=3).hits]
    assert [row["path"] for row in output["results"]] == api
    assert main(["search", "a red circle", "--library", str(library), "--after", "2020-13-01"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_searching_a_folder_that_is_no_library_is_one_clear_message(tmp_path: Path, capsys) -> None:
    assert main(["search", "a dog", "--library", str(tmp_path)]) == 2
    assert "not a captioner library" in capsys.readouterr().err
    assert not (tmp_path / "library.sqlite").exists()


def test_export_gives_every_photo_with_caption_tags_and_alt_text(library: Path, capsys, tmp_path: Path) -> None:
    assert main(["library", "export", "--library", str(library), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12 and all(Path(row["path"]).is_file() for row in rows)
    first = rows[0]
    assert first["alt_text"] == first["caption"][0].upper() + first["caption"][1:] + "." and len(first["tags"]) == 10
    target = tmp_path / "photos.csv"
    assert main(["library", "export", "--library", str(library), "--output", str(target)]) == 0
    lines = target.read_text().splitlines()
    assert lines[0] == "path,caption,tags,alt_text,width,height,taken" and len(lines) == 13


def embedding_searched(tiny_checkpoint: Path, tmp_path: Path, *options: str) -> tuple[Path, object]:
    """An embedding trained with `options` on a finished model (--epochs 0), as a user adds one, then eight photos
    indexed and searched with it: the first stage must pass on the photos nearest the query. Returns the
    checkpoint and the embedding as the library loaded it."""
    assert main(["train", "--model_path", str(tiny_checkpoint), "--epochs", "0", "--embedding_epochs", "2",
                 *options, "--output_dir", str(tmp_path / "runs")]) == 0
    checkpoint = next((tmp_path / "runs").glob("*/best.pt"))
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=8)
    run_index(checkpoint, photos)
    with Library(photos / ".captioner") as opened:
        embedding = opened.model.embedding
        cosine = opened.similarities(clean_caption("a big green square"))
        results = opened.search("a big green square", top_k=8, candidates=4)
    assert len(cosine) == 8 and all(-1.0001 <= value <= 1.0001 for value in cosine.values())
    assert {hit.id for hit in results.hits} == set(sorted(cosine, key=cosine.get, reverse=True)[:4])
    return checkpoint, embedding


def test_an_embedding_that_reads_sentences_searches_with_the_sentence_encoder(tiny_checkpoint: Path,
                                                                             tmp_path: Path) -> None:
    _, embedding = embedding_searched(tiny_checkpoint, tmp_path, "--embedding_text", "sentence")
    assert embedding.config.text == "sentence" and len(embedding.config.sentence_sha256) == 64


def test_an_ensemble_of_embeddings_is_trained_indexed_and_searched_as_one(tiny_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    checkpoint, embedding = embedding_searched(tiny_checkpoint, tmp_path, "--embedding_members", "2")
    assert embedding.config.members == 2 and embedding.vector_dim == 2 * embedding.config.dim
    history = load_checkpoint(checkpoint)["embedding"]["history"]
    assert [entry.get("member") for entry in history] == [1, 1, 2, 2, None] and history[-1]["ensemble"] == 2
