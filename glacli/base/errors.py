"""The one exception type that means "the user gave us something wrong"."""
from __future__ import annotations

import re
from pathlib import Path


class GlaInputError(ValueError):
    """A user error: bad file, bad option value, bad argument, files that do not belong together.

    A ``ValueError``, so that callers of the Python API catch it as one.

    The command-line layer prints it as one line (``gla: error: <message>``) and exits
    with status 2; anything else escaping a command is a bug and keeps its traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, whitespace collapsed, for a ``gla: error:`` line."""
    text = str(exc).strip().splitlines()
    return re.sub(r"\s+", " ", text[0]) if text else type(exc).__name__
