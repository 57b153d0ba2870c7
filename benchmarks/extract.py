"""Feature extraction speed: the bare encoder forward on random tensors vs the full pipeline from JPEG files.

    python benchmarks/extract.py [--encoder efficientnet_lite0] [--images 1000] [--data_dir ../shared/data/flickr8k]

Prints one table. The full pipeline should reach at least 80% of the bare forward.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from captioner.data.formats import load_dataset
from captioner.devices import autocast, pick_device
from captioner.features.encoders import create_encoder
from captioner.features.extract import default_workers, extract_features


def bare_forward(encoder_name: str, batch_size: int, batches: int, device: torch.device) -> float:
    encoder = create_encoder(encoder_name).to(device).to(memory_format=torch.channels_last)
    size = encoder.spec.image_size
    images = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device):
        encoder(images)  # warm-up
        started = time.perf_counter()
        for _ in range(batches):
            encoder(images).float().cpu()
    return batch_size * batches / (time.perf_counter() - started)


def full_pipeline(encoder_name: str, images: list[Path], batch_size: int, num_workers: int | None) -> float:
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        extract_features(images, encoder_name, cache_dir=Path(cache) / "c", batch_size=batch_size,
                         num_workers=num_workers, progress=False)
        return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, help="default: what extract uses on this machine")
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
    args = parser.parse_args()
    if not (args.data_dir / "Images").is_dir():
        sys.exit(f"no Flickr8k images in {args.data_dir}; pass --data_dir")
    device = pick_device()
    records = load_dataset("flickr8k", args.data_dir).records[: args.images]
    bare = bare_forward(args.encoder, args.batch_size, max(1, args.images // args.batch_size), device)
    workers = args.num_workers if args.num_workers is not None else default_workers(device)
    full = full_pipeline(args.encoder, [record.image for record in records], args.batch_size, workers)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}, torch {torch.__version__}")
    print("| encoder | what | images/s |")
    print("| --- | --- | ---: |")
    print(f"| {args.encoder} | bare forward, random tensors, batch {args.batch_size} | {bare:.1f} |")
    print(f"| {args.encoder} | full extraction from {len(records)} JPEGs, {workers} decoding workers | {full:.1f} |")
    print(f"| | full / bare | {100 * full / bare:.0f}% |")


if __name__ == "__main__":
    main()
