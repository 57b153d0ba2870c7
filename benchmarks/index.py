"""Indexing speed against captioning: `captioner index` does what `captioner caption` does (same model, same
decoding, same batches) and also hashes each file, stores its features and writes the database. It should
keep at least 90% of caption's images/s.

    python benchmarks/index.py --model_path runs/RUN/best.pt [--images 500] [--repeats 3]

Each repeat captions the images, then indexes them into a new library; the medians are printed.
"""

from __future__ import annotations

import argparse
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
from captioner.library.indexer import decode_settings, index, model_identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", type=Path, required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
    args = parser.parse_args()
    if not (args.data_dir / "Images").is_dir():
        sys.exit(f"no Flickr8k images in {args.data_dir}; pass --data_dir")
    captioner = Captioner.load(args.model_path)
    images = [r.image for r in load_dataset("flickr8k", args.data_dir).split("test")][: args.images]
    for path in images:  # into the page cache: the disk is not what is measured
        path.read_bytes()
    settings = decode_settings(captioner, 3)
    model = model_identity(args.model_path)
    for _ in captioner.caption_batches(images[:64], settings):  # warm-up
        pass
    caption_speeds, index_speeds = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in captioner.caption_batches(images, settings):
            pass
        caption_speeds.append(len(images) / (time.perf_counter() - started))
        folder = Path(tempfile.mkdtemp(prefix="captioner-index-"))
        try:
            started = time.perf_counter()
            index(images, captioner, model, folder / "library", images[0].parent, progress_bar=False,
                  say=lambda line: None)
            index_speeds.append(len(images) / (time.perf_counter() - started))
        finally:
            shutil.rmtree(folder)
    caption, indexed = statistics.median(caption_speeds), statistics.median(index_speeds)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {len(images)} Flickr8k test images; {settings.describe()}, 3 captions each")
    print(f"caption: {caption:.1f} images/s, index: {indexed:.1f} images/s ({indexed / caption:.0%} of caption)")


if __name__ == "__main__":
    main()
