"""Class names: the one reader of every ``--classnames FILE`` (extract, zeroshot, import) and the one check.

A file holds either text, one name per line, or a JSON list of strings (a ``.json`` file, or any
file whose text starts with ``[``). The same rules apply to both, and to names that other files
carry (an ``.npz`` entry, a prior's JSON): surrounding whitespace is stripped, and a blank name, a
repeated name or no name at all is refused with one line naming the file. Blank lines are refused
rather than skipped because line k names class k: a skipped line would shift every later name
onto another class. Blank lines at the very end of a file are ignored (editors add them).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from glacli.errors import GlaInputError

PLURALS = {"line": "lines", "entry": "entries", "class": "classes"}


def read_classnames(path: str | Path) -> list[str]:
    """The class names in ``path`` (text, one per line, or a JSON list of strings), checked."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GlaInputError("class names: no such file", path) from None
    except UnicodeDecodeError as exc:
        raise GlaInputError(f"class names are not UTF-8 text ({exc.reason})", path) from exc
    except OSError as exc:
        raise GlaInputError(f"class names cannot be read ({exc.strerror or exc})", path) from exc
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GlaInputError(f"class names are not valid JSON ({exc})", path) from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise GlaInputError("JSON class names must be a list of strings", path)
        return check_classnames(names, path, "entry")
    return check_classnames(text.rstrip().splitlines(), path, "line")


def check_classnames(names: Sequence[str], path: str | Path, unit: str = "class") -> list[str]:
    """``names`` with surrounding whitespace stripped; none, a blank one or a repeated one is refused.

    ``unit`` names the positions in messages: ``line`` (counted from 1) for a text file, ``entry``
    or ``class`` (counted from 0, as list indices are) otherwise.
    """
    names = [str(n).strip() for n in names]
    if not names:
        raise GlaInputError("holds no class names", path)
    if "" in names:
        raise GlaInputError(f"class name at {_at(unit, names.index(''))} is blank", path)
    require_unique(names, path, unit)
    return names


def require_unique(names: Sequence[str], path: str | Path | None, unit: str = "class") -> None:
    """Refuse a name that appears twice, saying where both are (``unit`` as in :func:`check_classnames`)."""
    duplicate = first_duplicate(names)
    if duplicate:
        k, name = duplicate
        raise GlaInputError(f"class name {name!r} appears twice ({_at(unit, list(names).index(name), k)})", path)


def first_duplicate(names: Sequence[str]) -> tuple[int, str] | None:
    """Position and value of the first name that appeared before it, or None when all are unique."""
    seen: set[str] = set()
    for k, name in enumerate(names):
        if name in seen:
            return k, name
        seen.add(name)
    return None


def _at(unit: str, *positions: int) -> str:
    """``line 3``, ``entries 0 and 2``: lines count from 1, entries and classes from 0."""
    numbers = " and ".join(str(p + 1 if unit == "line" else p) for p in positions)
    return f"{unit if len(positions) == 1 else PLURALS[unit]} {numbers}"
