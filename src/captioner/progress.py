"""Progress of long loops: a tqdm bar on a terminal; in a log (stderr redirected to a file) a start line and a
line every half minute, so that `captioner train ... > log 2>&1` says what it is doing while it works."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LOG_EVERY_S = 30.0


class LogProgress:
    """tqdm's interface (update, set_postfix, iteration, with), written as plain lines now and then."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", every_s: float | None = None) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix = 0, ""
        self.started = self.last = time.monotonic()
        self._write(f"{desc}: started" + (f", {self.total} {unit}" if self.total is not None else ""))

    def _write(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.n / max(now - self.started, 1e-9)
            done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
            left = f", about {(self.total - self.n) / rate / 60:.1f} min left" if self.total and rate > 0 else ""
            self._write(f"{self.desc}: {done} {self.unit} ({rate:.1f} {self.unit}/s{left}){self.postfix}")

    def set_postfix(self, **values: object) -> None:
        self.postfix = "; " + ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, leave: bool = True):
    """A progress bar on a terminal, LogProgress lines in a log, nothing when not `enabled` (other processes
    of a torchrun launch, or a caller that asked for quiet)."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr)
    return LogProgress(iterable, total, desc, unit)
