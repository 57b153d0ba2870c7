"""Training speed on cached Flickr8k features: captions/s of full training steps (batch assembly from the
feature cache, forward, backward, clipping, Adam), for the show-and-tell LSTM, the attention LSTM and the
transformer (3 layers, 8 heads, its default shape), each without the concept head, with it (its loss beside the captions'), and reading its concepts each way
(--use_concepts --concept_input project | attend).

    python benchmarks/train_throughput.py [--data_dir ../shared/data/flickr8k] [--cache_dir DIR] [--batches 40]

Builds (or reuses) the efficientnet_lite0 feature cache first. Prints one table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from captioner.training.config import TrainConfig
from captioner.training.setup import build_trainer
from captioner.training.trainer import peak_memory_mb


# no head; the head (1000 concepts) beside the captions; the captions reading its concepts, each way
CONCEPTS = {"none": {"num_concepts": 0}, "head": {"num_concepts": 1000},
            "project": {"use_concepts": True, "concept_input": "project"},
            "attend": {"use_concepts": True, "concept_input": "attend"}}


def measure(config: TrainConfig, batches: int, warmup: int = 3) -> tuple[float, float]:
    trainer = build_trainer(config, ["benchmark"])
    trainer.model.train()
    order, generator = trainer._batches(epoch=1)
    full = [indices for indices in order if len(indices) == config.batch_size]
    for indices in full[:warmup]:
        trainer.train_step(indices, generator)
    started = time.perf_counter()
    for indices in full[warmup:warmup + batches]:
        trainer.train_step(indices, generator)
    elapsed = time.perf_counter() - started
    return batches * config.batch_size / elapsed, peak_memory_mb(trainer.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
    parser.add_argument("--cache_dir", help="feature cache folder (default: the one `captioner extract` uses)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per row")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    if not (args.data_dir / "Images").is_dir():
        sys.exit(f"no Flickr8k images in {args.data_dir}; pass --data_dir")
    rows = []
    for decoder in ("lstm", "attention", "transformer"):
        for batch_size in args.batch_sizes:
            for concepts, reading in CONCEPTS.items():
                config = TrainConfig(dataset_type="flickr8k", data_dir=str(args.data_dir), cache_dir=args.cache_dir,
                                     decoder=decoder, batch_size=batch_size, embed_size=512, hidden_size=512,
                                     attention_dim=512, **reading)
                speed, memory = measure(config, args.batches)
                rows.append((decoder, batch_size, concepts, speed, memory))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; embed/hidden/attention 512 (transformer: width 512, 3 layers), efficientnet_lite0 7x7x1280 features")
    print(f"{'decoder':<10} {'batch':>5} {'concepts':<8} {'captions/s':>11} {'peak RSS MB':>12}")
    for decoder, batch_size, concepts, speed, memory in rows:
        print(f"{decoder:<10} {batch_size:>5} {concepts:<8} {speed:>11.0f} {memory:>12.0f}")


if __name__ == "__main__":
    main()
