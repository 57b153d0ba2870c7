"""One definition per option: a dataclass field holds its default, its range or choices and its help, and the
command line, the Python API and the web server all read them from there (adding an option is one edit).

    @dataclass
    class Settings:
        beam_size: int = option(3, "beam width", low=1)

    check(Settings(beam_size=0))   # ValueError: beam_size 0: must be at least 1
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True)
class Range:
    """Where a number may lie; None leaves a side open."""

    low: float | None = None
    high: float | None = None
    above: float | None = None  # strictly above
    below: float | None = None  # strictly below

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and (self.above is None or value > self.above) and (self.below is None or value < self.below))

    def describe(self) -> str:
        """ "at least 1", "above 0 and at most 1", ..."""
        parts = [f"at least {self.low:g}" if self.low is not None else "",
                 f"above {self.above:g}" if self.above is not None else "",
                 f"below {self.below:g}" if self.below is not None else "",
                 f"at most {self.high:g}" if self.high is not None else ""]
        return " and ".join(part for part in parts if part) or "finite"


def option(default: object, help: str = "", *, low: float | None = None, high: float | None = None,
           above: float | None = None, below: float | None = None, choices: tuple | None = None,
           flag: str | None = None, cli: bool = True, path: bool = False, recommendable: bool = False,
           negatable: bool = False, group: str | None = None) -> typing.Any:
    """A dataclass field with what the command line and the checks need.

    flag: the command-line spelling when it is not --NAME (`--no_amp`, `--sample_seed`); cli=False keeps it
    off the command line; path: the flag takes a file or folder; recommendable: a preset may recommend it
    (decoding options); negatable: a boolean with both --NAME and --no-NAME; group: the --help section."""
    metadata = {"help": help, "range": Range(low, high, above, below) if {low, high, above, below} != {None} else None,
                "choices": choices, "flag": flag, "cli": cli, "path": path, "recommendable": recommendable,
                "negatable": negatable, "group": group}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Spec:
    """One option as read from its field."""

    name: str
    default: object
    kind: type  # int, float, str, bool, dict, ... (without None)
    optional: bool  # None is allowed
    help: str
    range: Range | None
    choices: tuple | None
    flag: str
    cli: bool
    path: bool
    recommendable: bool
    negatable: bool
    group: str | None

    def problem(self, value: object) -> str | None:
        """Why `value` is not allowed for this option, or None."""
        if value is None:
            return None if self.optional else "must be given"
        if self.kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or (self.kind is int and not float(value).is_integer())):
            return f"must be {'a whole number' if self.kind is int else 'a number'}"
        if self.kind is bool and not isinstance(value, bool):
            return "must be true or false"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be finite"
        if self.range is not None and not self.range.allows(value):
            return f"must be {self.range.describe()}"
        return None


@lru_cache(maxsize=None)
def specs(cls: type) -> tuple[Spec, ...]:
    """The options of a dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    result = []
    for item in dataclasses.fields(cls):
        kind, optional = _kind(hints[item.name])
        meta = item.metadata
        default = item.default if item.default is not dataclasses.MISSING else (
            item.default_factory() if item.default_factory is not dataclasses.MISSING else None)
        result.append(Spec(item.name, default, kind, optional, meta.get("help", ""), meta.get("range"),
                           meta.get("choices"), meta.get("flag") or f"--{item.name}", meta.get("cli", True),
                           meta.get("path", False), meta.get("recommendable", False), meta.get("negatable", False),
                           meta.get("group")))
    return tuple(result)


def spec_of(cls: type, name: str) -> Spec:
    return next(spec for spec in specs(cls) if spec.name == name)


def check(settings: object, prefix: str = "") -> None:
    """ValueError naming the first option whose value is out of its range or choices ("beam_size 0: must be at
    least 1"); `prefix` "--" names them as flags."""
    for spec in specs(type(settings)):
        value = getattr(settings, spec.name)
        problem = spec.problem(value)
        if problem:
            shown = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
            raise ValueError(f"{prefix}{spec.name} {shown}: {problem}")


def _kind(hint: object) -> tuple[type, bool]:
    """(type, whether None is allowed) of an annotation such as `int | None`."""
    arguments = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if arguments and (optional or typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType"))):
        hint = arguments[0]
    origin = typing.get_origin(hint)
    return (origin or hint), optional
