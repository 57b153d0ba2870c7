"""`captioner serve` (the caption and review pages) and `captioner review export` (the ratings given there)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.cli.options import flag
from captioner.errors import CaptionerError


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    serve = subcommands.add_parser("serve", help="web pages to caption images and to review a model's captions")
    flag(serve, "--model_path", type=Path, help="checkpoint or exported bundle (with --library: the library's model)")
    flag(serve, "--library", type=Path, help="a library `captioner index` made: adds the library page (/library)")
    flag(serve, "--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    flag(serve, "--port", type=int, default=8000)
    flag(serve, "--eval_dir", type=Path, help="evaluation folder (or a run holding one) for the review page")
    flag(serve, "--max_upload_mb", type=float, default=10, help="largest accepted upload (default 10 MB)")
    flag(serve, "--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    flag(serve, "--encoder_weights", type=Path, help="local weights file of a torchvision encoder")
    serve.set_defaults(run=run_serve)
    review = subcommands.add_parser("review", help="human ratings collected on the review page")
    actions = review.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write the ratings with their averages as CSV or JSON")
    flag(export, "--eval_dir", type=Path, required=True, help="the evaluation folder (or the run holding it)")
    flag(export, "--format", choices=("csv", "json"), default="csv")
    flag(export, "--output", type=Path, help="file to write (default: the screen)")
    export.set_defaults(run=run_review_export)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from captioner.serve.app import create_app
    except ImportError as error:
        raise CaptionerError(f"serve needs the serve extras ({error.name} is missing): "
                             "pip install 'captioner[serve]'") from error
    from captioner.api import Captioner

    library, model_path = None, args.model_path
    if args.library is not None:
        library, model_path = open_library(args.library, args.model_path)
    elif model_path is None:
        raise CaptionerError("serve needs --model_path (or --library, whose model it then serves)")
    captioner = Captioner.load(model_path, args.device, args.encoder_weights)
    if library is not None:
        library.use_model(captioner.model)
    app = create_app(captioner, args.eval_dir, args.max_upload_mb, library=library)
    listening = listen(args.host, args.port)  # bound here, so the line below names the real port (--port 0)
    review = " (review: /review)" if args.eval_dir else ""
    review += " (library: /library)" if library is not None else ""
    print(f"captioner: serving on http://{args.host}:{listening.getsockname()[1]}/{review}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listening])
    return 0


def open_library(folder: Path, model_path: Path | None):
    """The library and the model that described it (which alone can rerank its searches): --model_path, if
    given, must be that model."""
    from captioner.library import Library
    from captioner.library.indexer import model_identity

    library = Library(folder)
    meta = library.database.meta()
    if "model" not in meta:
        raise CaptionerError(f"the library {folder} holds no photos yet; run `captioner index` first")
    if model_path is None:
        return library, Path(meta["model_path"])
    if model_identity(model_path) != meta["model"]:
        raise CaptionerError(f"{model_path} is not the model that indexed {folder} ({meta['model_path']}); leave out "
                             "--model_path, or index the library with it first")
    return library, model_path


def listen(host: str, port: int):
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise CaptionerError(f"cannot serve on {host}:{port}: {error.strerror or error}") from error


def run_review_export(args: argparse.Namespace) -> int:
    from captioner.evaluation.folder import Evaluation
    from captioner.evaluation.ratings import export_ratings

    evaluation = Evaluation.load(args.eval_dir)
    captions = {item["image_id"]: item["caption"] for item in evaluation.items}
    text = export_ratings(evaluation.folder, args.format, captions)
    if args.output:
        from captioner.io import atomic_write_text

        atomic_write_text(args.output, text)
        print(f"ratings: {args.output}")
    else:
        sys.stdout.write(text)
    return 0
