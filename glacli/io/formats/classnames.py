"""Class-name files: the one reader of every ``--classnames FILE`` (extract, zeroshot, import).

A file holds either text, one name per line, or a JSON list of strings (a ``.json`` file, or any
file whose text starts with ``[``). The same rules apply to both, and to names that other files
carry (an ``.npz`` entry, a prior's JSON), through :func:`glacli.base.validation.check_classnames`:
surrounding whitespace is stripped, and a blank name, a repeated name or no name at all is
refused with one line naming the file. Blank lines are refused rather than skipped because line
k names class k: a skipped line would shift every later name onto another class. Blank lines at
the very end of a file are ignored (editors add them).
"""
from __future__ import annotations

import json
from pathlib import Path

from glacli.base.errors import GlaInputError
from glacli.base.validation import check_classnames


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
