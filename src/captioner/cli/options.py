"""Flags built from the options' own definitions (TrainConfig, ScheduleSettings, DecodeSettings: see
captioner/options.py), so each default, range and help text is written once.

Flags use the underscore spellings common captioning scripts use (`--batch_size`); the dashed spelling
(`--batch-size`) is accepted too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.options import Spec, specs

# the dataset and encoder options `data stats` and `extract` share with `train` (TrainConfig's fields)
DATASET_OPTIONS = ("dataset_type", "data_dir", "captions_file", "max_images", "subset_fraction", "seed",
                   "freq_threshold", "max_vocab", "min_region_area")
ENCODER_OPTIONS = ("encoder", "encoder_weights", "image_size", "cache_dir", "augment_flip", "num_workers", "device")


def flag(parser: argparse._ActionsContainer, name: str, **options) -> None:
    """Add `--some_flag` together with its `--some-flag` spelling."""
    names = [name] + ([name.replace("_", "-")] if "_" in name else [])
    options.setdefault("dest", name.lstrip("-"))
    parser.add_argument(*names, **options)


def at_least(lowest: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `lowest` (a count of workers, images, pixels)."""
    def whole_number(text: str) -> int:
        value = int(text)  # argparse reports a ValueError as "invalid whole_number value"
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, not {value}")
        return value
    return whole_number


def value_type(spec: Spec) -> Callable[[str], object]:
    """An argparse type that reads the option's kind and checks its range as it parses."""
    if spec.path:
        return Path
    if spec.kind not in (int, float):
        return spec.kind

    def number(text: str) -> object:
        value = spec.kind(text)  # argparse reports a ValueError as "invalid ... value"
        problem = spec.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, not {text}")
        return value
    number.__name__ = "whole_number" if spec.kind is int else "number"
    return number


def add_spec(parser: argparse._ActionsContainer, spec: Spec, **overrides) -> None:
    """One flag for one option, as its field describes it."""
    shown = spec.help
    if spec.kind is not bool and spec.default is not None and "default" not in shown:  # --help shows every default
        shown = f"{shown} (default {spec.default})" if shown else f"default {spec.default}"
    options: dict = {"dest": spec.name, "help": shown or None}
    if spec.kind is bool and spec.negatable:
        options |= {"action": argparse.BooleanOptionalAction, "default": spec.default}
    elif spec.kind is bool:
        options |= {"action": "store_false" if spec.default else "store_true"}
    else:
        options |= {"type": value_type(spec), "default": spec.default}
        if spec.choices is not None:
            options["choices"] = spec.choices
    options.update(overrides)
    flag(parser, spec.flag, **options)


def add_options(parser: argparse.ArgumentParser, settings: type, names: Iterable[str] | None = None,
                group: str | None = None, sections: dict | None = None) -> dict[str, argparse._ArgumentGroup]:
    """Flags for the command-line options of a settings dataclass (or those named), in --help sections by the
    options' groups (or all in `group`); returns the sections, for a later call to add to."""
    wanted = list(names) if names is not None else None
    chosen = [spec for spec in specs(settings) if spec.cli and (wanted is None or spec.name in wanted)]
    if wanted is not None:
        chosen.sort(key=lambda spec: wanted.index(spec.name))
    sections = {} if sections is None else sections
    for spec in chosen:
        title = group or spec.group or "options"
        if title not in sections:
            sections[title] = parser.add_argument_group(title)
        add_spec(sections[title], spec)
    return sections


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    from captioner.training.config import TrainConfig

    add_options(parser, TrainConfig, DATASET_OPTIONS, "dataset")


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    from captioner.training.config import TrainConfig

    add_options(parser, TrainConfig, ENCODER_OPTIONS, "encoder and feature cache")


def report_failures(results: list, done: str) -> int:
    """List the images that could not be read (on stderr, after the output); exit 1 only when none could."""
    failed = [result for result in results if result.error]
    if failed:
        print(f"\n{len(failed)} of {len(results)} images could not be {done}:", file=sys.stderr)
        for result in failed:
            print(f"  {result.error}", file=sys.stderr)
    return 1 if failed and len(failed) == len(results) else 0


def load_dataset_from_args(args: argparse.Namespace):
    from captioner.data.formats import load_dataset

    return load_dataset(args.dataset_type, args.data_dir, captions_file=args.captions_file, seed=args.seed,
                        max_images=args.max_images, subset_fraction=args.subset_fraction,
                        min_region_area=args.min_region_area)


# ---------------------------------------------------------------- decoding


def add_decoding_args(parser: argparse.ArgumentParser, recommended: bool = True) -> None:
    """The decoding flags, one per DecodeSettings option; with `recommended`, --recommended too."""
    from captioner.decoding.settings import DecodeSettings

    group = parser.add_argument_group("decoding")
    if recommended:
        flag(group, "--recommended", action="store_true",
             help="decode as the model's training preset recommends (stored in the checkpoint; for flickr8k_best: "
                  "beam 5, length penalty 1.15, --flip_average, --no_repeat_ngram 2); flags given explicitly win")
    for spec in specs(DecodeSettings):
        if spec.cli:
            add_spec(group, spec, dest="sample_seed" if spec.name == "seed" else spec.name)


def decode_settings(args: argparse.Namespace):
    """DecodeSettings from the decoding flags, a wrong combination as one clear error."""
    from captioner.decoding.settings import DecodeSettings

    values = {spec.name: getattr(args, "sample_seed" if spec.name == "seed" else spec.name)
              for spec in specs(DecodeSettings) if spec.cli}
    try:
        return DecodeSettings(**values)
    except ValueError as error:
        raise CaptionerError(str(error)) from error
