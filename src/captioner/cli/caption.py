"""`captioner caption`: caption images, folders or globs; write them as text, JSON or CSV, a page of alt text,
or the missing alt attributes of an existing page."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioner.cli.options import add_decoding_args, at_least, decode_settings, flag, report_failures
from captioner.errors import CaptionerError


def add_command(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    caption = subcommands.add_parser("caption", help="caption images, folders or globs with a trained model")
    caption.add_argument("images", nargs="*", help="image files, folders (all images inside) or quoted globs")
    flag(caption, "--model_path", type=Path, required=True, help="checkpoint, e.g. runs/RUN/best.pt")
    flag(caption, "--format", choices=("text", "json", "csv"), default="text", help="default: text")
    flag(caption, "--output", type=Path, help="write the captions to this file instead of the screen")
    flag(caption, "--html", type=Path, help="also write a page showing every image with its caption as alt text")
    flag(caption, "--alt_text_into", type=Path,
         help="fill the missing alt attributes of this HTML page's local <img>s (writes PAGE.alt.html, or --output)")
    flag(caption, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    flag(caption, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    flag(caption, "--batch_size", type=at_least(1),
         help="images decoded together (default 64; the encoder runs them 16 at a time on a CPU, 64 on CUDA)")
    add_decoding_args(caption)
    caption.set_defaults(run=run)
    return caption


def expand_image_arguments(arguments: list[str]) -> list[str]:
    """Quoted globs are expanded here (the shell expands unquoted ones); a glob matching nothing stays as
    written, so it is reported as a missing file rather than vanishing."""
    import glob

    expanded = []
    for argument in arguments:
        matches = sorted(glob.glob(argument, recursive=True)) if glob.has_magic(argument) else []
        expanded += matches or [argument]
    return expanded


def run(args: argparse.Namespace) -> int:
    from captioner.api import Captioner, expand_inputs
    from captioner.data.records import IMAGE_EXTENSIONS
    from captioner.io import check_writable
    from captioner.progress import progress

    settings = decode_settings(args)
    for destination in (args.output, args.html):
        if destination is not None:
            check_writable(destination)  # before the captioning, whose results would be lost
    if args.alt_text_into is not None:
        if args.images:
            raise CaptionerError("--alt-text-into captions the images its page shows; leave out the images named "
                                 f"({' '.join(args.images)}), or caption them in a command of their own")
        return _fill_alt_text(args, Captioner.load(args.model_path, args.device, args.encoder_weights), settings)
    if not args.images:
        raise CaptionerError("name the images to caption (files, folders or globs), or pass --alt-text-into PAGE")
    items = list(expand_inputs(expand_image_arguments(args.images)))
    if not items:
        raise CaptionerError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {', '.join(args.images)}")
    captioner = Captioner.load(args.model_path, args.device, args.encoder_weights)
    results = []
    with progress(total=len(items), unit="img", desc="captioning", enabled=len(items) > 1) as bar:
        for batch in captioner.caption_batches([source for _, source in items], settings, args.batch_size):
            results.extend(batch)
            bar.update(len(batch))
    text = format_results(results, args.format)
    if args.output:
        from captioner.io import atomic_write_text

        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    if args.html:
        from captioner.alttext import gallery_page
        from captioner.io import atomic_write_text

        captioned = [(Path(r.image), r.text) for r in results if not r.image.startswith("<")]
        atomic_write_text(args.html, gallery_page(captioned, args.html))
        print(f"page with alt text: {args.html}", file=sys.stderr)
    return report_failures(results, "captioned")


def format_results(results: list, style: str) -> str:
    if style == "json":
        rows = [{"image": r.image, "captions": [{"text": c.text, "score": c.score} for c in r.captions],
                 **({"tags": [{"tag": tag, "probability": p} for tag, p in r.tags]} if r.tags else {}),
                 **({"error": r.error} if r.error else {})} for r in results]
        return json.dumps(rows, indent=2) + "\n"
    if style == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "rank", "caption", "score", "error"])
        for r in results:
            for rank, c in enumerate(r.captions, 1):
                writer.writerow([r.image, rank, c.text, f"{c.score:.4f}", ""])
            if r.error:
                writer.writerow([r.image, "", "", "", r.error])
        return buffer.getvalue()
    lines = []
    for r in results:
        if r.error:
            continue  # listed at the end, on stderr
        lines.append(f"{r.image}\t{r.text}")
        lines += [f"\t{c.text}\t({c.score:.2f})" for c in r.captions[1:]]
    return "\n".join(lines) + ("\n" if lines else "")


def _fill_alt_text(args: argparse.Namespace, captioner, settings) -> int:
    from captioner.alttext import fill_missing_alt
    from captioner.io import atomic_write_text

    page = args.alt_text_into
    if not page.is_file():
        raise CaptionerError(f"--alt-text-into {page}: no such page")

    def caption_images(paths: list[Path]) -> list[str | None]:
        return [result.text for batch in captioner.caption_batches(paths, settings, args.batch_size) for result in batch]

    new_page, notes = fill_missing_alt(page, caption_images)
    target = args.output or page.with_name(f"{page.stem}.alt{page.suffix}")
    if target.resolve() == page.resolve():
        raise CaptionerError("--alt-text-into writes a new page; pass an --output other than the page itself")
    atomic_write_text(target, new_page)
    print(f"page with alt text: {target}")
    for note in notes:
        print(f"  left without alt text: {note}", file=sys.stderr)
    return 0
