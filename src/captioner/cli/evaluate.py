"""`captioner evaluate`: caption a split and score it (also `captioner train --mode test`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.options import add_decoding_args, at_least, decode_settings, flag
from captioner.errors import CaptionerError


def add_command(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    evaluate = subcommands.add_parser("evaluate", help="caption a split and score it (BLEU, METEOR, ROUGE-L, CIDEr)")
    configure(evaluate)
    return evaluate


def configure(evaluate: argparse.ArgumentParser) -> None:
    from captioner.data.formats import DATASET_TYPES

    flag(evaluate, "--model_path", type=Path, required=True, help="checkpoint, e.g. runs/RUN/best.pt")
    flag(evaluate, "--split", choices=("test", "dev", "train"), default="test", help="default: test")
    data = evaluate.add_argument_group("data (default: what the model was trained on)")
    flag(data, "--dataset_type", choices=DATASET_TYPES)
    flag(data, "--data_dir", type=Path)
    flag(data, "--captions_file", type=Path)
    flag(data, "--max_images", type=int, help="evaluate the first N images of the split only")
    flag(data, "--cache_dir", type=Path, help="feature cache folder (default: the one training used)")
    flag(data, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    flag(data, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    flag(data, "--batch_size", type=at_least(1), default=100, help="images decoded at once")
    add_decoding_args(evaluate)
    flag(evaluate, "--output_dir", type=Path, help="evaluation folder (default: a new one beside the checkpoint)")
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.evaluation.evaluate import evaluate
    from captioner.models.loading import load_model

    if args.num_captions != 1:
        raise CaptionerError("evaluate scores one caption per image; leave out --num_captions")
    settings = decode_settings(args)
    model = load_model(args.model_path, args.device)
    result = evaluate(model, args.split, settings, dataset_type=args.dataset_type,
                      data_dir=str(args.data_dir) if args.data_dir else None,
                      captions_file=str(args.captions_file) if args.captions_file else None,
                      max_images=args.max_images, output_dir=args.output_dir, cache_dir=args.cache_dir,
                      encoder_weights=args.encoder_weights, batch_size=args.batch_size)
    print(f"{len(result.captions)} {args.split} images, {settings.describe()}, {result.seconds:.0f} s")
    print(result.scores.table())
    if result.tags:
        print(tags_table(result.tags))
    print(f"evaluation folder: {result.folder}")
    return 0


def tags_table(tags: dict) -> str:
    """The tag scores, the concept head's beside those of the caption's own words."""
    lines = ["tags (x100)                                  mAP     P@5     R@5"]
    for agreement, by_source in tags.items():
        for source, values in by_source.items():
            lines.append(f"{source + ', ' + agreement:<42} {values['mAP']:>6.2f}  {values['P@5']:>6.2f}  "
                         f"{values['R@5']:>6.2f}")
    return "\n".join(lines)
