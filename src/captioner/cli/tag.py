"""`captioner tag`: the concepts each photo shows, with their probabilities, from a model's concept head."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from captioner.cli.caption import expand_image_arguments
from captioner.cli.options import at_least, flag, report_failures
from captioner.errors import CaptionerError


def add_command(subcommands: argparse._SubParsersAction) -> None:
    tag = subcommands.add_parser("tag", help="tag images, folders or globs with the concepts they show")
    tag.add_argument("images", nargs="+", help="image files, folders (all images inside) or quoted globs")
    flag(tag, "--model_path", type=Path, required=True, help="checkpoint or bundle of a model with concepts")
    flag(tag, "--top_k", type=at_least(1), default=10, help="tags per image, likeliest first (default 10)")
    flag(tag, "--threshold", type=float, help="only tags at least this probable (0-1)")
    flag(tag, "--format", choices=("tsv", "json", "csv"), default="tsv",
         help="tsv: path<TAB>tag:probability ... (default); json; csv: one row per tag")
    flag(tag, "--output", type=Path, help="write the tags to this file instead of the screen")
    flag(tag, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    flag(tag, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    flag(tag, "--batch_size", type=at_least(1), help="images tagged together (default 64)")
    tag.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.api import Captioner, expand_inputs
    from captioner.data.records import IMAGE_EXTENSIONS
    from captioner.io import atomic_write_text, check_writable
    from captioner.progress import progress

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise CaptionerError(f"--threshold {args.threshold:g}: must be a probability, between 0 and 1")
    if args.output is not None:
        check_writable(args.output)
    items = list(expand_inputs(expand_image_arguments(args.images)))
    if not items:
        raise CaptionerError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {', '.join(args.images)}")
    captioner = Captioner.load(args.model_path, args.device, args.encoder_weights)
    captioner.check_tagging(args.top_k, args.threshold)  # before any image is read
    results = []
    batch_size = args.batch_size or captioner.default_batch_size
    with progress(total=len(items), unit="img", desc="tagging", enabled=len(items) > 1) as bar:
        for start in range(0, len(items), batch_size):
            batch = [source for _, source in items[start:start + batch_size]]
            results += captioner.tag(batch, args.top_k, args.threshold, batch_size)
            bar.update(len(batch))
    text = format_tags(results, args.format)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return report_failures(results, "tagged")


def format_tags(results: list, style: str) -> str:
    if style == "json":
        rows = [{"image": r.image, "tags": [{"tag": tag, "probability": p} for tag, p in r.tags],
                 **({"error": r.error} if r.error else {})} for r in results]
        return json.dumps(rows, indent=2) + "\n"
    if style == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "rank", "tag", "probability", "error"])
        for r in results:
            for rank, (tag, probability) in enumerate(r.tags, 1):
                writer.writerow([r.image, rank, tag, f"{probability:.4f}", ""])
            if r.error:
                writer.writerow([r.image, "", "", "", r.error])
        return buffer.getvalue()
    lines = [f"{r.image}\t" + " ".join(f"{tag}:{probability:.2f}" for tag, probability in r.tags)
             for r in results if not r.error]
    return "\n".join(lines) + ("\n" if lines else "")
