"""An option defined once in a dataclass field: its range, its checks and what the command line makes of it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from captioner.options import Range, check, option, spec_of, specs


@dataclass
class Settings:
    size: int = option(3, "how many", low=1)
    share: float = option(0.5, "a share", above=0, high=1)
    name: str = option("beam", choices=("greedy", "beam"))
    limit: int | None = option(None, low=0)
    quiet: bool = option(False, flag="--silent", cli=False)


def test_fields_are_read_as_specs() -> None:
    size = spec_of(Settings, "size")
    assert (size.default, size.kind, size.optional, size.help, size.flag) == (3, int, False, "how many", "--size")
    limit = spec_of(Settings, "limit")
    assert limit.kind is int and limit.optional and limit.default is None
    quiet = spec_of(Settings, "quiet")
    assert quiet.flag == "--silent" and not quiet.cli and quiet.kind is bool
    assert [spec.name for spec in specs(Settings)] == ["size", "share", "name", "limit", "quiet"]


@pytest.mark.parametrize("values, message", [
    ({"size": 0}, "size 0: must be at least 1"), ({"share": 0.0}, "share 0: must be above 0 and at most 1"),
    ({"share": float("nan")}, "share nan: must be finite"), ({"name": "nucleus"}, "name 'nucleus': must be one of"),
    ({"limit": -1}, "limit -1: must be at least 0"), ({"size": 2.5}, "size 2.5: must be a whole number"),
    ({"size": True}, "size True: must be a whole number")])
def test_check_names_the_option_and_its_range(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check(Settings(**values))
    check(Settings())  # the defaults are allowed
    check(Settings(limit=None, size=7))


def test_ranges_describe_themselves() -> None:
    assert Range(low=0, below=1).describe() == "at least 0 and below 1"
    assert Range(above=0).allows(1e-9) and not Range(above=0).allows(0)
    assert not Range(low=0).allows(float("inf"))
