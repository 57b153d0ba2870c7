"""`captioner data stats|download`: what is in a dataset, and fetching the public ones."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioner.cli.options import add_dataset_args, flag, load_dataset_from_args
from captioner.errors import CaptionerError


def add_command(subcommands: argparse._SubParsersAction) -> None:
    data = subcommands.add_parser("data", help="inspect or download datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="{stats,download}")

    stats = data_commands.add_parser("stats", help="images, captions, splits, skipped items, vocabulary size")
    add_dataset_args(stats)
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.set_defaults(run=run_stats)

    from captioner.data.download import DOWNLOADS

    download = data_commands.add_parser("download", help="download a public dataset (needs a network)")
    download.add_argument("name", choices=sorted(DOWNLOADS))
    flag(download, "--data_dir", type=Path,
         help="folder to download and extract into (default $CAPTIONER_DATA/NAME, else data/NAME)")
    flag(download, "--base_url", help=argparse.SUPPRESS)  # tests point this at a loopback server
    download.set_defaults(run=run_download)


def run_stats(args: argparse.Namespace) -> int:
    from captioner.data.stats import dataset_stats, format_stats

    dataset = load_dataset_from_args(args)
    stats = dataset_stats(dataset, args.freq_threshold, args.max_vocab)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats, dataset.report.summary()))
    return 0


def run_download(args: argparse.Namespace) -> int:
    from captioner.data.download import download_dataset
    from captioner.data.formats import default_data_dir, load_dataset

    folder = args.data_dir or default_data_dir(args.name)
    try:  # laid out by hand, or downloaded before: nothing to fetch
        dataset = load_dataset(args.name, folder)
    except CaptionerError:
        dataset = None
    if dataset is not None and dataset.records:
        print(f"{args.name} is already in {folder} ({len(dataset.records)} images); nothing to download")
        return 0
    folder = download_dataset(args.name, folder, base_url=args.base_url)
    print(f"{args.name} is ready in {folder}")
    return 0
