"""The `captioner` command: one parser with a subcommand per job (one module each in this package).

The command line is parsed once. Each option's value comes from, in rising precedence: its own default, the
preset named by --preset, the checkpoint a --resume/--model_path run goes on from, the decoding a model
recommends (--recommended), and last the flags given explicitly. Errors a user can cause print one line, no
traceback, and exit 2 (--verbose adds what lay beneath).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from captioner.cli import (caption, data, evaluate, export, extract, index, library, search, serve, tag, train,
                           visualize)
from captioner.errors import CaptionerError


def build_parser() -> argparse.ArgumentParser:
    from captioner import __version__

    parser = argparse.ArgumentParser(prog="captioner", description="Train, evaluate and use image captioning models.")
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    add_verbose(parser)
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_command(subcommands)
    extract.add_command(subcommands)
    parser.subcommand_parsers = {"train": train.add_command(subcommands),
                                 "evaluate": evaluate.add_command(subcommands),
                                 "caption": caption.add_command(subcommands)}
    tag.add_command(subcommands)
    visualize.add_command(subcommands)
    export.add_command(subcommands)
    index.add_command(subcommands)
    search.add_command(subcommands)
    library.add_command(subcommands)
    serve.add_commands(subcommands)
    for command_parser in _all_parsers(parser):
        if command_parser is not parser:
            add_verbose(command_parser)
        command_parser.option_defaults = _take_defaults(command_parser)
    return parser


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, also show what lay beneath it (the library's own message, the traceback)")


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _all_parsers(child)
    return found


def _take_defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    """Each option's default, kept aside: the parser itself then leaves out what was not given, so that the
    layers of defaults can go beneath the explicit flags."""
    defaults = {}
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        if action.default is not argparse.SUPPRESS:
            defaults[action.dest] = action.default
            action.default = argparse.SUPPRESS
    return defaults


def resolve(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse once, then fill in every option not given, from the layers of defaults."""
    explicit = parser.parse_args(argv)
    return _layered(_command_parser(parser, explicit), vars(explicit), training=explicit.command == "train")


def _layered(command_parser: argparse.ArgumentParser, given: dict[str, object], training: bool) -> argparse.Namespace:
    values = dict(command_parser.option_defaults)
    if training:
        values.update(train.preset_values(given.get("preset")))
        options = set(command_parser.option_defaults) | {"decoding"}
        values.update(train.resumed_values(argparse.Namespace(**{**values, **given}), options))
    if {**values, **given}.get("recommended"):
        from captioner.decoding.recommended import recommended_decoding

        values.update(recommended_decoding(given["model_path"]))
    return argparse.Namespace(**{**values, **given})


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser whose options `args` holds: `data stats` is the parser of stats inside data."""
    current = parser
    while True:
        sub = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or getattr(args, sub.dest, None) is None:
            return current
        current = sub.choices[getattr(args, sub.dest)]


def test_mode_arguments(argv: list[str]) -> list[str] | None:
    """`captioner train --mode test ...`, the classic spelling of evaluate: the evaluate arguments, or None."""
    if not argv or argv[0] != "train":
        return None
    rest = list(argv[1:])
    for position, item in enumerate(rest):
        if item in ("--mode", "--mode=test", "--mode=train"):
            value = item.split("=", 1)[1] if "=" in item else (rest[position + 1] if position + 1 < len(rest) else "")
            if value != "test":
                return None
            del rest[position:position + (1 if "=" in item else 2)]
            return rest
    return None


def _parse_test_mode(evaluate_argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="captioner train --mode test")
    evaluate.configure(parser)
    add_verbose(parser)
    parser.option_defaults = _take_defaults(parser)
    explicit, ignored = parser.parse_known_args(evaluate_argv)
    if ignored:
        print(f"captioner: --mode test evaluates; ignoring training options {' '.join(ignored)}", file=sys.stderr)
    return _layered(parser, vars(explicit), training=False)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    try:
        evaluate_argv = test_mode_arguments(argv)
        args = _parse_test_mode(evaluate_argv) if evaluate_argv is not None else resolve(build_parser(), argv)
        return int(args.run(args) or 0)
    except CaptionerError as error:
        print(f"captioner: error: {error}", file=sys.stderr)
        if verbose:
            cause = error.__cause__ or error.__context__
            if cause is not None:
                print(f"beneath it: {type(cause).__name__}: {cause}", file=sys.stderr)
            traceback.print_exception(error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130
