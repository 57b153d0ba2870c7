"""`captioner index`: caption and tag a photo collection into its library, then only what changed."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.options import at_least, flag
from captioner.errors import CaptionerError


def add_command(subcommands: argparse._SubParsersAction) -> None:
    index = subcommands.add_parser("index", help="caption and tag a photo collection into a searchable library")
    index.add_argument("photos", nargs="*", type=Path,
                       help="photo files or folders (walked recursively); none: the library's whole photo folder")
    flag(index, "--model_path", type=Path, required=True, help="checkpoint or bundle that describes the photos")
    flag(index, "--library", type=Path,
         help="the library folder (default: PHOTOS/.captioner; needed for several folders or single files)")
    flag(index, "--num_captions", type=at_least(1), default=3, help="captions kept per photo, best first (default 3)")
    flag(index, "--reindex", action="store_true", help="describe every photo again, changed or not")
    flag(index, "--batch_size", type=at_least(1), help="photos captioned together (default 64)")
    flag(index, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    flag(index, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    index.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.training.distributed import start_processes, stop_processes

    processes, device = start_processes(args.device)  # under torchrun: this process's share of the photos
    try:
        return _run(args, processes, str(device) if device is not None else args.device)
    finally:
        stop_processes()


def _run(args: argparse.Namespace, processes, device: str | None) -> int:
    from captioner.api import Captioner
    from captioner.library.database import LibraryDatabase
    from captioner.library.indexer import index, library_location, model_identity, photo_root

    if args.library is not None and (args.library / "library.sqlite").exists():
        folder = args.library
        with LibraryDatabase.open(folder) as database:
            root = photo_root(database)
    else:
        folder, root = library_location(args.photos, args.library)
    if not args.photos and not (folder / "library.sqlite").exists():
        raise CaptionerError("name the photos to index (files or folders)")
    captioner = Captioner.load(args.model_path, device, args.encoder_weights)
    report = index(args.photos, captioner, model_identity(args.model_path), folder, root,
                   batch_size=args.batch_size or captioner.default_batch_size, num_captions=args.num_captions,
                   reindex=args.reindex, progress_bar=processes.is_main, processes=processes)
    if not processes.is_main:
        return 0
    work = report.work
    described = report.added + report.recaptioned
    parts = [f"{report.added} new", f"{report.recaptioned} described again", f"{work.unchanged} unchanged"]
    parts += [f"{len(items)} {name}" for name, items in (("touched (same content)", work.touched),
                                                          ("moved", work.moved), ("copies of indexed photos",
                                                                                   work.copied),
                                                          ("removed", work.removed)) if items]
    if report.unreadable:
        parts.append(f"{report.unreadable} unreadable")
    if work.vanished:
        parts.append(f"{work.vanished} deleted while indexing")
    rate = f" ({described / report.seconds:.1f} images/s)" if described and report.seconds > 0 else ""
    shared = f" in {processes.world_size} processes" if processes.distributed else ""
    print(f"library {folder}: {', '.join(parts)}; {report.seconds:.1f} s{rate}{shared}")
    return 0
