"""`captioner export`: a bundle (safetensors + JSON) that loads without pickles, and ONNX files."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.options import flag
from captioner.errors import CaptionerError


def add_command(subcommands: argparse._SubParsersAction) -> None:
    export = subcommands.add_parser("export", help="write a bundle (safetensors + JSON) that loads without pickles")
    flag(export, "--model_path", type=Path, required=True, help="checkpoint to export")
    flag(export, "--output", type=Path, required=True, help="bundle folder to write")
    flag(export, "--onnx", action="store_true",
         help="also write encoder.onnx, decoder_start.onnx and decoder_step.onnx")
    flag(export, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.io import check_writable
    from captioner.models.bundle import export_bundle
    from captioner.models.loading import load_model

    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        raise CaptionerError(f"--output {args.output} is {'not empty' if args.output.is_dir() else 'a file'}; "
                             "choose a new folder")
    check_writable(args.output / "config.json")
    model = load_model(args.model_path, "cpu", with_encoder=True, encoder_weights=args.encoder_weights)
    if args.onnx:
        from captioner.models.onnx import check_exportable

        check_exportable(model)  # before the bundle: no half of what was asked for
    export_bundle(model, args.output)
    if args.onnx:
        from captioner.models.onnx import export_onnx

        export_onnx(model, args.output)
    print(f"bundle: {args.output} ({', '.join(sorted(p.name for p in args.output.iterdir()))})")
    return 0
