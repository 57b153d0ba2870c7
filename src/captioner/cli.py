"""The `captioner` command: one argparse parser with a subcommand per job.

Flags use the underscore spellings common captioning scripts use (`--batch_size`); the dashed spelling
(`--batch-size`) is accepted too. Errors a user can cause print one line, no traceback, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from captioner.errors import CaptionerError


def flag(parser: argparse._ActionsContainer, name: str, **options) -> None:
    """Add `--some_flag` together with its `--some-flag` spelling."""
    names = [name] + ([name.replace("_", "-")] if "_" in name else [])
    options.setdefault("dest", name.lstrip("-"))
    parser.add_argument(*names, **options)


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    from captioner.data.formats import DATASET_TYPES

    group = parser.add_argument_group("dataset")
    flag(group, "--dataset_type", choices=DATASET_TYPES, default="shapes",
         help="caption format / dataset (default: shapes, the synthetic set drawn on the fly)")
    flag(group, "--data_dir", type=Path, help="dataset folder (for shapes: where to draw it; default a cache folder)")
    flag(group, "--captions_file", type=Path, help="caption file to use instead of the one found in --data_dir")
    flag(group, "--max_images", type=int, help="use only this many images, the same share of every split")
    flag(group, "--subset_fraction", type=float, help="use only this share (0-1] of every split")
    flag(group, "--seed", type=int, default=42, help="seed for subsets, splits and training (default 42)")
    flag(group, "--freq_threshold", type=int, default=5, help="keep words seen at least this often (default 5)")
    flag(group, "--max_vocab", type=int, help="cap the vocabulary at this many words, specials included")


def load_dataset_from_args(args: argparse.Namespace):
    from captioner.data.formats import load_dataset

    return load_dataset(args.dataset_type, args.data_dir, captions_file=args.captions_file, seed=args.seed,
                        max_images=args.max_images, subset_fraction=args.subset_fraction)


# ---------------------------------------------------------------- data


def run_data_stats(args: argparse.Namespace) -> int:
    from captioner.data.stats import dataset_stats, format_stats

    dataset = load_dataset_from_args(args)
    stats = dataset_stats(dataset, args.freq_threshold, args.max_vocab)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats, dataset.report.summary()))
    return 0


def run_data_download(args: argparse.Namespace) -> int:
    from captioner.data.download import download_dataset
    from captioner.data.formats import default_data_dir

    folder = download_dataset(args.name, args.data_dir or default_data_dir(args.name), base_url=args.base_url)
    print(f"{args.name} is ready in {folder}")
    return 0


def add_data_commands(subcommands: argparse._SubParsersAction) -> None:
    data = subcommands.add_parser("data", help="inspect or download datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="{stats,download}")

    stats = data_commands.add_parser("stats", help="images, captions, splits, skipped items, vocabulary size")
    add_dataset_args(stats)
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.set_defaults(run=run_data_stats)

    from captioner.data.download import DOWNLOADS

    download = data_commands.add_parser("download", help="download a public dataset (needs a network)")
    download.add_argument("name", choices=sorted(DOWNLOADS))
    flag(download, "--data_dir", type=Path,
         help="folder to download and extract into (default $CAPTIONER_DATA/NAME, else data/NAME)")
    flag(download, "--base_url", help=argparse.SUPPRESS)  # tests point this at a loopback server
    download.set_defaults(run=run_data_download)


# ---------------------------------------------------------------- extract


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    from captioner.encoders import ENCODERS

    group = parser.add_argument_group("encoder and feature cache")
    flag(group, "--encoder", choices=list(ENCODERS), default="efficientnet_lite0", help="CNN encoder")
    flag(group, "--encoder_weights", type=Path, help="local .pth weights for torchvision encoders")
    flag(group, "--image_size", type=int, help="input side in pixels (default: the encoder's own, 224 for lite0)")
    flag(group, "--cache_dir", type=Path, help="feature cache folder (default: one per dataset and settings "
                                               "under ~/.cache/captioner/features or $CAPTIONER_CACHE)")
    flag(group, "--augment_flip", action="store_true", help="also cache features of horizontally flipped images")
    flag(group, "--num_workers", type=int, help="image-decoding worker processes (default: 0 on a CPU with "
                                                "2 cores, where inline decoding is faster; more with CUDA)")
    flag(group, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")


def run_extract(args: argparse.Namespace) -> int:
    import time

    from captioner.features import extract_features

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


def add_extract_command(subcommands: argparse._SubParsersAction) -> None:
    extract = subcommands.add_parser("extract", help="run the encoder once per image and cache its features")
    add_dataset_args(extract)
    add_encoder_args(extract)
    flag(extract, "--batch_size", type=int, help="images per encoder batch (default 16 on CPU, 128 on CUDA)")
    extract.set_defaults(run=run_extract)


# ---------------------------------------------------------------- train


def add_train_command(subcommands: argparse._SubParsersAction) -> None:
    from captioner.decoders import DECODER_TYPES
    from captioner.schedulers import SCHEDULER_TYPES

    train = subcommands.add_parser("train", help="train a captioning model (on cached encoder features by default)")
    add_dataset_args(train)
    add_encoder_args(train)
    images = train.add_argument_group("training on images instead of the feature cache")
    flag(images, "--fine_tune_encoder", action="store_true", help="train the encoder too (batch norm stays frozen)")
    flag(images, "--augment", action="store_true", help="random crop, flip and colour jitter of each image")
    flag(images, "--encoder_lr", type=float, default=1e-4, help="learning rate of a fine-tuned encoder")
    model = train.add_argument_group("model")
    flag(model, "--decoder", choices=DECODER_TYPES, default="attention", help="default: attention")
    flag(model, "--embed_size", type=int, default=512)
    flag(model, "--hidden_size", type=int, default=512)
    flag(model, "--attention_dim", type=int, default=512)
    flag(model, "--num_layers", type=int, default=1, help="RNN layers of lstm/gru decoders")
    flag(model, "--drop_prob", type=float, default=0.5, help="dropout (default 0.5)")
    flag(model, "--image_init", choices=("input", "state"), default="input",
         help="lstm/gru: the image is the first input (default) or the initial state")
    flag(model, "--alpha_c", type=float, default=1.0, help="attention: doubly stochastic regularisation weight")
    optim = train.add_argument_group("optimisation")
    flag(optim, "--epochs", type=int, default=10)
    flag(optim, "--batch_size", type=int, default=64)
    flag(optim, "--learning_rate", type=float, default=4e-4)
    flag(optim, "--clip_norm", type=float, default=5.0, help="gradient clipping norm (0: off)")
    flag(optim, "--weight_decay", type=float, default=0.0)
    flag(optim, "--label_smoothing", type=float, default=0.0)
    flag(optim, "--max_length", type=int, default=30, help="longest caption in words (training and decoding)")
    flag(optim, "--no_amp", dest="amp", action="store_false", help="train in fp32 even where bf16 is fast")
    schedule = train.add_argument_group("learning-rate schedule")
    flag(schedule, "--use_scheduler", action="store_true")
    flag(schedule, "--scheduler_type", choices=SCHEDULER_TYPES, default="reduce_lr_on_plateau")
    flag(schedule, "--scheduler_patience", type=int, default=2)
    flag(schedule, "--scheduler_factor", type=float, default=0.5)
    flag(schedule, "--scheduler_step_size", type=int, default=5)
    flag(schedule, "--scheduler_gamma", type=float, default=0.8)
    flag(schedule, "--scheduler_t_max", type=int, help="cosine period in epochs (default: --epochs)")
    flag(schedule, "--min_lr", type=float, default=0.0)
    flag(schedule, "--warmup_epochs", type=int, default=1, help="one_cycle: epochs of rising learning rate")
    flag(schedule, "--keep_epochs", type=int, default=5, help="keep_then_decay: epochs at the initial rate")
    run = train.add_argument_group("run")
    flag(run, "--early_stopping_patience", type=int, help="stop after this many epochs without a better val loss")
    flag(run, "--keep_checkpoints", type=int, default=2, help="keep the last N model_epoch_N.pt (best.pt always)")
    flag(run, "--output_dir", type=Path, default=Path("runs"))
    flag(run, "--show_samples", type=int, default=0, help="at the end, caption N held-out test images")
    flag(run, "--resume", type=Path, help="checkpoint to continue from, up to --epochs in all")
    flag(run, "--model_path", type=Path, help="checkpoint to continue from for --epochs more epochs")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from captioner.checkpoint import load_checkpoint
    from captioner.train import Trainer, TrainConfig

    if args.model_path is not None and args.resume is None:
        args.resume = args.model_path
        args.epochs = load_checkpoint(args.model_path)["epoch"] + args.epochs
    config = TrainConfig.from_namespace(args)
    folder = Trainer(config, sys.argv).run()
    if folder is not None:  # None on the non-main processes of a torchrun launch
        print(f"run directory: {folder}")
    return 0


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    from captioner import __version__

    parser = argparse.ArgumentParser(prog="captioner", description="Train, evaluate and use image captioning models.")
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(subcommands)
    add_extract_command(subcommands)
    add_train_command(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CaptionerError as error:
        print(f"captioner: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130
