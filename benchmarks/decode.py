"""Captioning speed: greedy and beam search (3 beams unless --beam_size) from cached features (the decoder
alone), and end to end from JPEG files (decode, resize, encoder, decoder) next to the encoder's bare forward
speed on random tensors; for a model with a concept head, tagging end to end too.

    python benchmarks/decode.py --model_path runs/RUN/best.pt [OTHER/best.pt ...] [--images 500] [--beam_size 5]

Prints one table, a column per model: each figure is the median of --repeats runs. End to end with beam 3
should reach at least 80% of the bare encoder: decoding must not be the bottleneck.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from captioner.api import Captioner
from captioner.data.formats import load_dataset
from captioner.decoding.strategies import decode
from captioner.decoding.settings import DecodeSettings
from captioner.devices import autocast
from captioner.evaluation.evaluate import model_features


def bare_encoder(captioner: Captioner, batch_size: int, batches: int) -> float:
    size, device = captioner.image_size, captioner.model.device
    images = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device):
        captioner.encoder(images)
        started = time.perf_counter()
        for _ in range(batches):
            captioner.encoder(images).float().cpu()
    return batch_size * batches / (time.perf_counter() - started)


def from_features(captioner: Captioner, images: list[Path], settings: DecodeSettings, batch_size: int) -> float:
    source = model_features(captioner.model, images, None, None, progress=False)
    rows = [source.row(path) for path in images]
    uses_grid = captioner.model.decoder.uses_grid
    features = [source.features(rows[i:i + batch_size], uses_grid).to(captioner.model.device)
                for i in range(0, len(rows), batch_size)]
    started = time.perf_counter()
    for chunk in features:
        decode(captioner.model.decoder, chunk, captioner.model.vocab, settings)
    return len(images) / (time.perf_counter() - started)


def end_to_end(captioner: Captioner, images: list[Path], strategy: str, batch_size: int, beam_size: int = 3) -> float:
    started = time.perf_counter()
    captioner.caption(images, strategy=strategy, beam_size=beam_size, batch_size=batch_size)
    return len(images) / (time.perf_counter() - started)


def tagging(captioner: Captioner, images: list[Path], batch_size: int) -> float:
    started = time.perf_counter()
    captioner.tag(images, batch_size=batch_size)
    return len(images) / (time.perf_counter() - started)


def measurements_of(captioner: Captioner, images: list[Path], batch_size: int, beams: int
                    ) -> dict[str, Callable[[], float]]:
    encoder_batch = captioner.encoder_batch_size
    measurements = {
        "encoder forward only (random tensors)":
            lambda: bare_encoder(captioner, encoder_batch, max(1, len(images) // encoder_batch)),
        "greedy from cached features": lambda: from_features(captioner, images, DecodeSettings("greedy"), 100),
        f"beam {beams} from cached features": lambda: from_features(captioner, images, DecodeSettings("beam", beams),
                                                                  100),
        "greedy end to end from JPEG": lambda: end_to_end(captioner, images, "greedy", batch_size),
        f"beam {beams} end to end from JPEG": lambda: end_to_end(captioner, images, "beam", batch_size, beams),
    }
    if captioner.can_tag:  # the concept head's tags alone: the encoder and one small layer
        measurements["tags end to end from JPEG"] = lambda: tagging(captioner, images, batch_size)
    return measurements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", type=Path, nargs="+", required=True,
                        help="one or more models, measured in turns in the same run: one column each")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch_size", type=int, help="images per batch end to end (default: the API's, 64)")
    parser.add_argument("--beam_size", type=int, default=3, help="beams of the beam-search rows (flickr8k_best "
                        "recommends 5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the median is shown")
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
    args = parser.parse_args()
    if not (args.data_dir / "Images").is_dir():
        sys.exit(f"no Flickr8k images in {args.data_dir}; pass --data_dir")
    captioners = [Captioner.load(path) for path in args.model_path]
    images = [r.image for r in load_dataset("flickr8k", args.data_dir).split("test")][: args.images]
    batch_size = args.batch_size or captioners[0].default_batch_size
    for path in images:  # into the page cache: the disk is not what is measured
        path.read_bytes()
    for captioner in captioners:
        end_to_end(captioner, images[:batch_size], "beam", batch_size)  # warm-up
    measurements = [measurements_of(captioner, images, batch_size, args.beam_size) for captioner in captioners]
    # each the median of `repeats` runs, taken in turns, so that a slow spell of a shared machine hits all alike
    runs = [[{name: measure() for name, measure in model.items()} for model in measurements]
            for _ in range(args.repeats)]
    speeds = [{name: statistics.median(run[m][name] for run in runs) for name in model}
              for m, model in enumerate(measurements)]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {len(images)} Flickr8k test images, batch {batch_size} end to end "
          f"(encoder batch {captioners[0].encoder_batch_size}), 100 from cached features")
    labels = []
    for captioner in captioners:
        config = captioner.model.decoder.config
        labels.append(f"{captioner.model.encoder_name}+{config.decoder}")
        print(f"{labels[-1]}: {config.decoder} decoder, hidden {config.hidden_size}, {config.num_layers} layer(s)")
    names = list(dict.fromkeys(name for model in measurements for name in model))
    width = max(12, *(len(label) for label in labels))
    print(f"{'images/s':<40}" + "".join(f" {label:>{width}}" for label in labels))
    for name in names:
        cells = [f"{model[name]:.1f}" if name in model else "-" for model in speeds]
        print(f"{name:<40}" + "".join(f" {cell:>{width}}" for cell in cells))
    for label, model in zip(labels, speeds):
        share = model[f"beam {args.beam_size} end to end from JPEG"] / model["encoder forward only (random tensors)"]
        print(f"{label}: beam {args.beam_size} end to end / encoder forward: {share:.0%}")


if __name__ == "__main__":
    main()
