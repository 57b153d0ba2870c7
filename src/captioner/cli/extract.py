"""`captioner extract`: run the encoder once per image and cache its features."""

from __future__ import annotations

import argparse
import time

from captioner.cli.options import add_dataset_args, add_encoder_args, at_least, flag, load_dataset_from_args


def add_command(subcommands: argparse._SubParsersAction) -> None:
    extract = subcommands.add_parser("extract", help="run the encoder once per image and cache its features")
    add_dataset_args(extract)
    add_encoder_args(extract)
    flag(extract, "--batch_size", type=at_least(1),
         help="images per encoder batch (default 16 on CPU, 128 on CUDA)")
    extract.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.features.extract import extract_features

    dataset = load_dataset_from_args(args)
    images = [record.image for record in dataset.records]
    started = time.perf_counter()
    store = extract_features(images, args.encoder, image_size=args.image_size, cache_dir=args.cache_dir,
                             flip=args.augment_flip, weights=args.encoder_weights, batch_size=args.batch_size,
                             num_workers=args.num_workers, device=args.device)
    seconds = time.perf_counter() - started
    h, w, c = store.grid_shape
    skipped = [name for name in map(str, images) if name in store.skipped]
    print(f"features of {len(images) - len(skipped)} images ({h}x{w}x{c} grid + {c} pooled, float16) "
          f"in {store.folder} [{seconds:.1f} s]")
    if skipped:
        print(f"skipped {len(skipped)} unreadable images:")
        for name in skipped:
            print(f"  {store.skipped[name]}")
    return 0
