"""Errors a user can cause and fix; the CLI prints them without a traceback."""


class CaptionerError(Exception):
    """A mistake in the user's input or settings, with a message that says what to do about it."""


class DatasetFormatError(CaptionerError):
    """A caption or split file that is not in the format its reader expects."""

    def __init__(self, path: object, line: int | None, expected: str, found: str = "") -> None:
        where = f"{path}, line {line}" if line is not None else f"{path}"
        message = f"{where}: expected {expected}"
        if found:
            message += f", found {found!r}"
        super().__init__(message)
        self.path = path
        self.line = line


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message for a one-line error; its type when it has no message."""
    return (str(error).splitlines() or [type(error).__name__])[0][:limit]
