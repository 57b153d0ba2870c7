"""`captioner library export|xmp`: what a library knows about its photos, for other programs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.cli.options import flag


def add_command(subcommands: argparse._SubParsersAction) -> None:
    library = subcommands.add_parser("library", help="export a library's captions and tags")
    jobs = library.add_subparsers(dest="library_command", required=True, metavar="JOB")
    export = jobs.add_parser("export", help="path, caption, tags and alt text of every photo, as CSV or JSON")
    flag(export, "--library", type=Path, required=True, help="the library folder `captioner index` made")
    flag(export, "--format", choices=("csv", "json"), default="csv", help="default csv")
    flag(export, "--output", type=Path, help="write to this file instead of the screen")
    export.set_defaults(run=run_export)
    xmp = jobs.add_parser("xmp", help="write XMP sidecars (photo.jpg.xmp): caption as dc:description, tags as "
                                      "dc:subject; the photos are not touched")
    flag(xmp, "--library", type=Path, required=True, help="the library folder `captioner index` made")
    flag(xmp, "--min_probability", type=float, default=0.25,
         help="tags at least this probable go into dc:subject (default 0.25)")
    flag(xmp, "--replace_descriptions", action="store_true",
         help="write the caption over a dc:description the sidecar already has (default: keep it)")
    xmp.set_defaults(run=run_xmp)


def run_export(args: argparse.Namespace) -> int:
    from captioner.io import atomic_write_text, check_writable
    from captioner.library.database import LibraryDatabase
    from captioner.library.export import export_text

    if args.output is not None:
        check_writable(args.output)
    with LibraryDatabase.open(args.library) as database:
        text = export_text(database, args.format)
    if args.output is not None:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def run_xmp(args: argparse.Namespace) -> int:
    from captioner.errors import CaptionerError
    from captioner.library.database import LibraryDatabase
    from captioner.library.export import described_photos
    from captioner.library.xmp import write_sidecar

    with LibraryDatabase.open(args.library) as database:
        photos = described_photos(database)
    written, failed = 0, []
    for photo in photos:
        tags = [tag["tag"] for tag in photo["tags"] if tag["probability"] >= args.min_probability]
        try:
            write_sidecar(Path(photo["path"]), photo["caption"], tags, args.replace_descriptions)
            written += 1
        except (CaptionerError, OSError) as error:
            failed.append(f"{photo['path']}: {error}")
    for line in failed:
        print(line, file=sys.stderr)
    print(f"XMP sidecars: {written} written" + (f", {len(failed)} failed" if failed else ""))
    return 1 if failed else 0
