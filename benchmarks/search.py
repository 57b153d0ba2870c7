"""Search latency on a large library: Flickr8k's images, repeated under new names up to --images (10,000 by
default), indexed once (the repeats are copies, described from their twins), then the test references as
queries. Prints the median and p95 of `Library.search` (first stage + reranking of the best --candidates, by default as `search`).

    python benchmarks/search.py --model_path runs/RUN/best.pt [--images 10000] [--queries 300]

The library is built in --library (default: a folder in /tmp) and reused while the model stays the same.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from captioner.api import Captioner
from captioner.data.formats import load_dataset
from captioner.library import Library
from captioner.library.indexer import index, model_identity
from captioner.library.search import CANDIDATES


def photo_folder(images: list[Path], count: int, folder: Path) -> Path:
    """`count` photos named photo_NNNNN.jpg, hard links to (or copies of) the dataset's images taken in turn:
    not symlinks, which lead out of the photo folder and are not indexed."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        link = folder / f"photo_{number:05d}.jpg"
        if not link.exists():
            try:
                os.link(images[number % len(images)], link)
            except OSError:  # another file system
                shutil.copyfile(images[number % len(images)], link)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", type=Path, required=True)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=CANDIDATES)
    parser.add_argument("--library", type=Path, help="work folder (default: one in the temporary folder)")
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
    args = parser.parse_args()
    if not (args.data_dir / "Images").is_dir():
        sys.exit(f"no Flickr8k images in {args.data_dir}; pass --data_dir")
    dataset = load_dataset("flickr8k", args.data_dir)
    work = args.library or Path(tempfile.gettempdir()) / f"captioner-search-{args.images}"
    photos = photo_folder(sorted(r.image for r in dataset.records), args.images, work / "photos")
    captioner = Captioner.load(args.model_path)
    started = time.perf_counter()
    report = index([photos], captioner, model_identity(args.model_path), photos / ".captioner", photos)
    print(f"indexed {report.added + report.recaptioned} photos, {len(report.work.copied)} copies, in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    queries = [caption for record in dataset.split("test") for caption in record.captions[:1]][: args.queries]
    with Library(photos / ".captioner", captioner.model) as library:
        library.search(queries[0])  # warm-up: the feature file mapped, the model's kernels chosen
        seconds = []
        for query in queries:
            started = time.perf_counter()
            library.search(query, top_k=20, candidates=args.candidates)
            seconds.append(time.perf_counter() - started)
        size = library.database.counts()["images"]
    seconds.sort()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {args.model_path}; a library of {size} photos, {len(queries)} queries, "
          f"reranking the best {args.candidates}")
    print(f"search latency: median {1000 * statistics.median(seconds):.0f} ms, "
          f"p95 {1000 * seconds[int(0.95 * (len(seconds) - 1))]:.0f} ms, max {1000 * seconds[-1]:.0f} ms")


if __name__ == "__main__":
    main()
