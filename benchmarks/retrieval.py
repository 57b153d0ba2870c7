"""Search quality measured as the papers measure text-to-image retrieval: the split's images (Flickr8k test:
1000) form a library, each of their reference captions (5000) is a query, and the image it describes is the
right answer. R@1, R@5, R@10 and the median rank for each stage of `captioner search`:

    BM25 over the generated captions | over the tags | over both (the first stage)
    the first stage, then the model's log P(query | image) over its best --candidates (what search does)
    log P(query | image) over every image, no first stage (slow: --baseline_queries of them)

    python benchmarks/retrieval.py --model_path runs/RUN/best.pt [--split test] [--candidates 100]

Tune on --split dev; report test. The library is built once in --library (default: a folder in /tmp) and
reused while the model and images stay the same.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from captioner.api import Captioner
from captioner.data.formats import load_dataset
from captioner.data.vocab import clean_caption
from captioner.library import Library
from captioner.library.indexer import index, model_identity

MISSED = 10**9  # the rank of an image the stage did not return


def recalls(ranks: list[int]) -> dict[str, float]:
    return {"R@1": 100 * sum(r <= 1 for r in ranks) / len(ranks), "R@5": 100 * sum(r <= 5 for r in ranks) / len(ranks),
            "R@10": 100 * sum(r <= 10 for r in ranks) / len(ranks), "median": statistics.median(ranks)}


def bm25_ranks(library: Library, queries: list[tuple[str, int]], columns: str, limit: int) -> list[int]:
    db = library.database.connection
    ranks = []
    for text, answer in queries:
        words = " OR ".join(f'"{w}"' for w in dict.fromkeys(clean_caption(text)))
        rows = db.execute("SELECT rowid FROM search_text WHERE search_text MATCH ? ORDER BY bm25(search_text) "
                          "LIMIT ?", (f"{columns} : ({words})", limit)).fetchall()
        found = [row[0] for row in rows]
        ranks.append(found.index(answer) + 1 if answer in found else MISSED)
    return ranks


def search_ranks(library: Library, queries: list[tuple[str, int]], candidates: int) -> tuple[list[int], list[float]]:
    ranks, seconds = [], []
    for text, answer in queries:
        started = time.perf_counter()
        hits = library.search(text, top_k=candidates, candidates=candidates).hits
        seconds.append(time.perf_counter() - started)
        found = [hit.id for hit in hits]
        ranks.append(found.index(answer) + 1 if answer in found else MISSED)
    return ranks, seconds


def likelihood_ranks(library: Library, queries: list[tuple[str, int]], ids: list[int]) -> list[int]:
    """Every image scored by log P(query | image); the rank of the right one."""
    ranks = []
    for text, answer in queries:
        scores = library._likelihoods(ids, library.model.vocab.encode(clean_caption(text)))
        mine = scores[answer]
        ranks.append(1 + sum(score > mine for score in scores.values()))
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", type=Path, required=True)
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
    parser.add_argument("--split", choices=("dev", "test"), default="test")
    parser.add_argument("--candidates", type=int, default=100, help="what the first stage passes to the reranking")
    parser.add_argument("--library", type=Path, help="library folder (default: one in the temporary folder)")
    parser.add_argument("--queries", type=int, help="only the first N queries (default: all)")
    parser.add_argument("--baseline_queries", type=int, default=1000,
                        help="queries for the every-image likelihood (one per image; 0: skip it)")
    args = parser.parse_args()
    if not (args.data_dir / "Images").is_dir():
        sys.exit(f"no Flickr8k images in {args.data_dir}; pass --data_dir")
    records = load_dataset("flickr8k", args.data_dir).split(args.split)
    folder = args.library or Path(tempfile.gettempdir()) / f"captioner-retrieval-{args.split}"
    captioner = Captioner.load(args.model_path)
    started = time.perf_counter()
    report = index([r.image for r in records], captioner, model_identity(args.model_path), folder,
                   Path(records[0].image).parent, progress_bar=True)
    print(f"library of {len(records)} {args.split} images: {report.added + report.recaptioned} indexed in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    with Library(folder, captioner.model) as library:
        id_of = dict(library.database.connection.execute("SELECT path, id FROM images WHERE removed_at IS NULL"))
        root = library.root
        queries = [(caption, id_of[Path(r.image).relative_to(root).as_posix()]) for r in records
                   for caption in r.captions]
        queries = queries[: args.queries] if args.queries else queries
        everything = len(id_of)
        rows = [("BM25, generated captions", recalls(bm25_ranks(library, queries, "captions", everything))),
                ("BM25, tags", recalls(bm25_ranks(library, queries, "tags", everything))),
                ("BM25, captions + tags (first stage)",
                 recalls(bm25_ranks(library, queries, "{captions tags}", everything)))]
        ranks, seconds = search_ranks(library, queries, args.candidates)
        rows.append((f"first stage + log P(query | image), top {args.candidates}", recalls(ranks)))
        if args.baseline_queries:
            one_each = list({answer: (text, answer) for text, answer in queries}.values())[: args.baseline_queries]
            rows.append((f"log P(query | image), every image ({len(one_each)} queries)",
                         recalls(likelihood_ranks(library, one_each, list(id_of.values())))))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {args.model_path}; Flickr8k {args.split}: {everything} images, {len(queries)} queries")
    print(f"{'stage':<58} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'median':>7}")
    for name, result in rows:
        median = "-" if result["median"] >= MISSED else f"{result['median']:g}"
        print(f"{name:<58} {result['R@1']:>6.1f} {result['R@5']:>6.1f} {result['R@10']:>6.1f} {median:>7}")
    seconds.sort()
    print(f"search latency: median {1000 * statistics.median(seconds):.0f} ms, "
          f"p95 {1000 * seconds[int(0.95 * (len(seconds) - 1))]:.0f} ms")


if __name__ == "__main__":
    main()
