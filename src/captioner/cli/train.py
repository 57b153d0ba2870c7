"""`captioner train`: its flags come from TrainConfig and ScheduleSettings; `--model_path CKPT --epochs N`
continues a checkpoint for N more epochs, `--mode test` evaluates one (the classic spelling of evaluate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.cli.options import add_options, flag


def add_command(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from captioner.training.config import RUN, TrainConfig
    from captioner.training.schedulers import ScheduleSettings

    train = subcommands.add_parser("train", help="train a captioning model (on cached encoder features by default)")
    names = [spec.name for spec in _train_specs()]
    split = names.index("use_scheduler") + 1
    sections = add_options(train, TrainConfig, names[:split])
    add_options(train, ScheduleSettings, sections=sections)
    add_options(train, TrainConfig, names[split:names.index("resume") + 1], sections=sections)
    flag(sections[RUN], "--model_path", type=Path,
         help="checkpoint to continue from for --epochs more epochs of its kind (cross-entropy or self-critical; "
              "early stopping counts afresh)")
    flag(sections[RUN], "--mode", choices=("train", "test"), default="train",
         help="test: evaluate --model_path instead (same as `captioner evaluate`)")
    add_options(train, TrainConfig, ["preset"], sections=sections)
    train.set_defaults(run=run)
    return train


def _train_specs():
    from captioner.options import specs
    from captioner.training.config import TrainConfig

    return [spec for spec in specs(TrainConfig) if spec.cli]


def run(args: argparse.Namespace) -> int:
    from captioner.models.checkpoint import load_checkpoint
    from captioner.training.config import TrainConfig
    from captioner.training.resume import continuation_epochs
    from captioner.training.setup import build_trainer

    if args.model_path is not None and args.resume is None:  # N more epochs of the checkpoint's kind
        checkpoint = load_checkpoint(args.model_path)
        args.resume, args.restart_patience = args.model_path, True
        args.epochs, args.scst_epochs = continuation_epochs(checkpoint, args.epochs, args.scst_epochs)
    folder = build_trainer(TrainConfig.from_namespace(args), sys.argv).run()
    if folder is not None:  # None on the non-main processes of a torchrun launch
        print(f"run directory: {folder}")
    return 0


def resumed_values(args: argparse.Namespace, options: set[str]) -> dict[str, object]:
    """The settings a --resume or --model_path run takes from its checkpoint (flags given explicitly win)."""
    if not (args.resume or args.model_path):
        return {}
    from captioner.training.resume import resumed_settings

    return resumed_settings(args.resume or args.model_path, options, continuing=args.resume is None)


def preset_values(name: str | None) -> dict[str, object]:
    """A preset's options, and the decoding its models will recommend."""
    if not name:
        return {}
    from captioner.training.presets import DECODING, PRESETS

    return {**PRESETS[name], "decoding": DECODING.get(name)}
