"""Every flag of every subcommand keeps its spelling and default: flags.json was recorded from the command line
as it was before the package was laid out by stage, and the parser of today must match it."""

from __future__ import annotations

import json
from pathlib import Path

from captioner.cli.command import build_parser
from tests.cli.flagset import flag_set

RECORDED = Path(__file__).with_name("flags.json")


def test_every_recorded_flag_keeps_its_spelling_and_default() -> None:
    recorded = json.loads(RECORDED.read_text())
    current = flag_set(build_parser())
    for command, options in recorded.items():
        assert command in current, f"subcommand {command!r} is gone"
        for spelling, recorded_option in options.items():
            assert spelling in current[command], f"{command}: {spelling} is gone"
            now = dict(current[command][spelling])
            if recorded_option["choices"] is not None:  # choices may be added (a new dataset type), none removed
                assert set(recorded_option["choices"]) <= set(now["choices"]), f"{command} {spelling} lost choices"
                now["choices"] = recorded_option["choices"]
            assert now == recorded_option, f"{command} {spelling} changed"
