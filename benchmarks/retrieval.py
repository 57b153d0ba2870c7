"""Search quality measured as the papers measure text-to-image retrieval: the split's images (Flickr8k test:
1000) form a library, each of their reference captions (5000) is a query, and the image it describes is the
right answer. R@1, R@5, R@10 and the median rank for each stage of `captioner search`:

    BM25 over the generated captions | over the tags | over both
    the text-image embedding alone (models trained with --embedding_epochs)
    a first stage's best --candidates reranked by log P(query | image) + w * cosine + v * concept score,
    for several w and v
    log P(query | image) over every image, no first stage (slow: --baseline_queries of them)

    python benchmarks/retrieval.py --model_path runs/RUN/best.pt [--split test] [--candidates 50]

Tune on --split dev (it prints the w dev likes best); report test. The library is built once in --library
(default: a folder in /tmp) and reused while the model and images stay the same. Ends with the latency of
`Library.search` itself on the split's library.
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
from captioner.library.search import CANDIDATES, CONCEPT_WEIGHT, EMBEDDING_WEIGHT, combined

MISSED = 10**9  # the rank of an image the stage did not return
WEIGHTS = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0)
CONCEPT_WEIGHTS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
PRIOR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
PRIOR_WEIGHT = 0.0  # what search subtracts (dev chose none of PRIOR_WEIGHTS)
CANDIDATE_COUNTS = (20, 30, 40, 50, 70, 100)  # how many of the embedding's nearest the sweep reranks


def recalls(ranks: list[int]) -> dict[str, float]:
    return {"R@1": 100 * sum(r <= 1 for r in ranks) / len(ranks), "R@5": 100 * sum(r <= 5 for r in ranks) / len(ranks),
            "R@10": 100 * sum(r <= 10 for r in ranks) / len(ranks), "median": statistics.median(ranks)}


def rank_of(answer: int, scores: dict[int, float]) -> int:
    if answer not in scores:
        return MISSED
    mine = scores[answer]
    return 1 + sum(score > mine for score in scores.values())


def bm25(library: Library, words: list[str], columns: str, limit: int) -> dict[int, float]:
    match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
    rows = library.database.connection.execute(
        "SELECT rowid, -bm25(search_text) FROM search_text WHERE search_text MATCH ? ORDER BY bm25(search_text) "
        "LIMIT ?", (f"{columns} : ({match})", limit)).fetchall()
    return dict(rows)


def best(scores: dict[int, float], count: int) -> list[int]:
    return sorted(scores, key=scores.get, reverse=True)[:count]


def image_prior(library: Library, data_dir: Path, id_of: dict[str, int], count: int) -> dict[int, float]:
    """Each library image's mean log P over `count` training captions drawn once (the same for every image):
    how likely the model finds any sentence for it."""
    import random

    training = [text for record in load_dataset("flickr8k", data_dir).split("train") for text in record.captions]
    sample = random.Random(0).sample(training, count)
    ids = list(id_of.values())
    total = dict.fromkeys(ids, 0.0)
    for text in sample:
        for image_id, value in library.likelihoods(ids, clean_caption(text)).items():
            total[image_id] += value / count
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", type=Path, required=True)
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
    parser.add_argument("--split", choices=("dev", "test"), default="test")
    parser.add_argument("--candidates", type=int, default=CANDIDATES,
                        help="what the first stage passes to the reranking (default: as `search`)")
    parser.add_argument("--library", type=Path, help="library folder (default: one in the temporary folder)")
    parser.add_argument("--queries", type=int, help="only N queries: each image's first caption, then second... (default: all)")
    parser.add_argument("--baseline_queries", type=int, default=1000,
                        help="queries for the every-image likelihood (one per image; 0: skip it)")
    parser.add_argument("--prior_captions", type=int, default=0,
                        help="also try subtracting each image's mean log P over this many training captions")
    parser.add_argument("--sweep", action="store_true",
                        help="print every weight and number of candidates tried (to stderr)")
    parser.add_argument("--timed_queries", type=int, default=200, help="queries timed through Library.search")
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
        numbered = [(n, caption, id_of[Path(r.image).relative_to(root).as_posix()]) for r in records
                    for n, caption in enumerate(r.captions)]
        if args.queries:  # spread over the split: each image's first caption, then each one's second...
            numbered = sorted(numbered, key=lambda query: query[0])[: args.queries]
        queries = [(caption, answer) for _, caption, answer in numbered]
        everything = len(id_of)
        ranks: dict[str, list[int]] = {name: [] for name in ("captions", "tags", "both", "embedding")}
        has_embedding = captioner.model.embedding is not None
        prior = image_prior(library, args.data_dir, id_of, args.prior_captions) if args.prior_captions else {}
        has_concepts = captioner.can_tag
        counts = {"bm25": (args.candidates,), "embedding": tuple(
            k for k in sorted({*CANDIDATE_COUNTS, args.candidates}) if k <= args.candidates) if args.sweep
            else (args.candidates,)}
        combos = [(first, k, w, v, b) for first in (("bm25", "embedding") if has_embedding else ("bm25",))
                  for k in counts[first] for w in (WEIGHTS if has_embedding else (0.0,))
                  for v in (CONCEPT_WEIGHTS if has_concepts else (0.0,)) for b in (PRIOR_WEIGHTS if prior else (0.0,))]
        reranked: dict[tuple[str, int, float, float, float], list[int]] = {combo: [] for combo in combos}
        for number, (text, answer) in enumerate(queries, 1):
            words = clean_caption(text)
            for name, columns in (("captions", "captions"), ("tags", "tags"), ("both", "{captions tags}")):
                ranks[name].append(rank_of(answer, bm25(library, words, columns, everything)))
            lexical = bm25(library, words, "{captions tags}", args.candidates)
            cosine = library.similarities(words) if has_embedding else {}
            ranks["embedding"].append(rank_of(answer, cosine))
            firsts = {"bm25": best(lexical, args.candidates), "embedding": best(cosine, args.candidates)}
            evidence = library.evidence(sorted(set(firsts["bm25"]) | set(firsts["embedding"])), words)
            for first, k, w, v, b in combos:
                reranked[(first, k, w, v, b)].append(rank_of(answer, {
                    i: combined(evidence[i], cosine.get(i, 0.0), w, v) - b * prior.get(i, 0.0)
                    for i in firsts[first][:k]}))
            if number % 500 == 0:
                print(f"{number}/{len(queries)} queries", file=sys.stderr)
        rows = [("BM25, generated captions", recalls(ranks["captions"])), ("BM25, tags", recalls(ranks["tags"])),
                ("BM25, captions + tags", recalls(ranks["both"]))]
        if has_embedding:
            rows.append(("text-image embedding", recalls(ranks["embedding"])))
        scored = {combo: recalls(kept) for combo, kept in reranked.items()}
        if args.sweep:
            for (first, k, w, v, b), result in scored.items():
                print(f"sweep {first} k={k} w={w:g} v={v:g} b={b:g}: R@1 {result['R@1']:.1f} R@5 {result['R@5']:.1f} "
                      f"R@10 {result['R@10']:.1f}", file=sys.stderr)
        for first, k in dict.fromkeys(combo[:2] for combo in combos):
            mine = [combo for combo in combos if combo[:2] == (first, k)]
            chosen = max(mine, key=lambda combo: scored[combo]["R@1"] + scored[combo]["R@5"] + scored[combo]["R@10"])
            default = (first, k, EMBEDDING_WEIGHT if has_embedding else 0.0, CONCEPT_WEIGHT if has_concepts else 0.0,
                       PRIOR_WEIGHT if prior else 0.0)
            alone = (first, k, 0.0, 0.0, 0.0)
            for combo in dict.fromkeys((alone, default, chosen)):
                _, _, w, v, b = combo
                label = (f" + {w:g} cosine" if w else "") + (f" + {v:g} concepts" if v else "")
                label += f" - {b:g} prior" if b else ""
                label += " (search's default)" if combo == default and combo != alone else ""
                label += " (this split's best)" if combo == chosen else ""
                rows.append((f"{first} top {k}, log P{label}", scored[combo]))
        if args.baseline_queries:
            one_each = list({answer: (text, answer) for text, answer in queries}.values())[: args.baseline_queries]
            every = list(id_of.values())
            baseline = [rank_of(answer, library.likelihoods(every, clean_caption(text))) for text, answer in one_each]
            rows.append((f"log P(query | image), every image ({len(one_each)} queries)", recalls(baseline)))
        seconds = []
        for text, _ in queries[: args.timed_queries]:
            started = time.perf_counter()
            library.search(text, top_k=20, candidates=args.candidates)
            seconds.append(time.perf_counter() - started)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {args.model_path}; Flickr8k {args.split}: {everything} images, {len(queries)} queries")
    print(f"{'stage':<68} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'median':>7}")
    for name, result in rows:
        median = "-" if result["median"] >= MISSED else f"{result['median']:g}"
        # two decimals: with 5000 queries one query is 0.02, and a target such as R@1 >= 30 needs telling apart
        print(f"{name:<68} {result['R@1']:>6.2f} {result['R@5']:>6.2f} {result['R@10']:>6.2f} {median:>7}")
    if seconds:
        seconds.sort()
        print(f"search latency ({len(seconds)} queries): median {1000 * statistics.median(seconds):.0f} ms, "
              f"p95 {1000 * seconds[int(0.95 * (len(seconds) - 1))]:.0f} ms")


if __name__ == "__main__":
    main()
