"""CoOp-style split JSON: ``{"train": [[path, label, classname], ...], "val": ..., "test": ...}``.

The file names its classes (every label must appear with one name, in any split); ``--split``
picks the rows, ``--root`` the folder the paths start from (default: the file's folder).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Rows
from glacli.base.validation import require_unique
from glacli.io.sources.base import Layout, Request


def list_rows(request: Request) -> Rows:
    path, split = request.path, request.split
    root = Path(request.root) if request.root else path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlaInputError(f"split file is not valid JSON ({exc})", path) from exc
    if not isinstance(data, dict):
        raise GlaInputError('split file must hold {"train": [[path, label, classname], ...], ...}', path)
    if split is None:
        raise GlaInputError(f"a split JSON needs --split ({', '.join(k for k in data if isinstance(data[k], list))})",
                            path)
    if not isinstance(data.get(split), list):
        raise GlaInputError(f"has no split {split!r} (it has: {', '.join(sorted(data))})", path)
    names: dict[int, str] = {}
    for name in data:
        for k, item in enumerate(data[name] if isinstance(data[name], list) else []):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], int) and not isinstance(item[1], bool) and item[1] >= 0
                    and isinstance(item[2], str)):
                raise GlaInputError(f"{name}[{k}] is not [path, label, classname]", path)
            if names.setdefault(item[1], item[2]) != item[2]:
                raise GlaInputError(f"label {item[1]} is named both {names[item[1]]!r} and {item[2]!r}", path)
    n_classes = max(names) + 1
    if len(names) != n_classes:
        missing = min(set(range(n_classes)) - set(names))
        raise GlaInputError(f"label {missing} never appears, so its class has no name", path)
    classnames = [names[k].replace("_", " ") for k in range(n_classes)]
    require_unique(classnames, path)
    items = data[split]
    ids = [item[0] for item in items]
    base = root.resolve()
    return Rows([os.path.join(base, p) for p in ids], ids, np.array([item[1] for item in items], np.int64),
                classnames, "split", {"source": str(path.resolve()), "source_kind": "split", "split": split,
                                      "root": str(base)})


LAYOUT = Layout(
    name="split JSON files", help="a CoOp split .json (with --split)",
    claims=lambda source: Path(source).suffix == ".json", list_rows=list_rows,
    options=frozenset({"--split", "--root"}), input_kinds=("image",))
