"""The CLI's whole flag set as plain data: every subcommand's options with their spellings and defaults."""

from __future__ import annotations

import argparse
from pathlib import Path


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flag_set(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, dict[str, dict]]:
    """{"train": {"--batch_size --batch-size": {"dest", "default", "choices", "nargs", "required", "action"}}, ...}"""
    table: dict[str, dict[str, dict]] = {}
    defaults = getattr(parser, "option_defaults", {})
    options: dict[str, dict] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                table.update(flag_set(child, f"{prefix} {name}".strip()))
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        key = " ".join(action.option_strings) or action.dest
        default = defaults.get(action.dest, action.default)
        options[key] = {"dest": action.dest, "default": _plain(default),
                        "choices": _plain(list(action.choices)) if action.choices is not None else None,
                        "nargs": action.nargs, "required": action.required,
                        "takes_value": action.nargs != 0}
    if prefix:
        table[prefix] = options
    return table
