"""What every foreign-format reader shares: the rows it yields and how it finds its entries.

A reader turns a file into a :class:`RowSource` (rows of values with what the file said about
classes, labels and ids) or into a prior vector. Files written by other tools name their arrays
and columns in many ways; the tables below are the names tried, in order, when the user names
none (``--key``, ``--labels-key``, ``--ids-key``, ``--label-column``, ``--id-column``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.validation import check_classnames, require_finite, require_numeric

VALUE_KEYS = {
    "logits": ("logits", "predictions", "probs", "probabilities", "scores", "values", "outputs", "x"),
    "features": ("features", "embeddings", "feats", "values", "x"),
    "prior": ("prior", "q", "p", "values"),
}
"""Array entries (.npz, .pt) that hold the values of each kind."""
LABEL_KEYS = ("labels", "label", "ground_truth", "targets", "target", "y")
ID_KEYS = ("ids", "id", "instance_ids", "paths")
CLASSNAME_KEYS = ("classnames", "class_names", "classes")

Chunks = Iterator[tuple[int, np.ndarray, list[str] | None]]
"""(first row, float64 values, ids or None) for consecutive blocks of rows."""


@dataclass(frozen=True)
class ReadOptions:
    """What the user said about a foreign rows file: which entry or column holds what, and the
    class names that text labels refer to. Each reader uses the fields of its format."""

    key: str | None = None
    labels_key: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    classnames: Sequence[str] | None = None
    ids_key: str | None = None
    classnames_key: str | None = None


@dataclass
class RowSource:
    """Rows of a foreign file: sizes, what it said about classes, labels and ids, and its values.

    ``chunks(rows)`` reads the values block by block (an array is sliced ``rows`` at a time; a
    CSV file comes in its own parser's blocks), so memory does not grow with the file.
    """

    path: Path
    n_rows: int
    n_cols: int
    classnames: list[str] | None
    labels: np.ndarray | None
    labels_from: str
    ids_from: str
    classnames_from: str
    dtype: np.dtype
    """The values' dtype in the file (text counts as float64)."""
    chunks: Callable[[int], Chunks]


def positional_classnames(names: Sequence[str]) -> bool:
    """Names that only number the columns (``0``, ``1``, ... or ``class_0``, ``class_1``, ...): a
    ``--classnames`` list names them by position, where names that say something are matched by name."""
    return all(name in (str(k), f"class_{k}") for k, name in enumerate(names))


def require_file(path: Path) -> None:
    if not path.exists():
        raise GlaInputError("no such file", path)
    if path.is_dir():
        raise GlaInputError("is a directory, not a file", path)


def as_labels(values: Any, path: str | Path, what: str) -> np.ndarray:
    """A 1-D integer label vector; integral floats (``3.0``) are accepted."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise GlaInputError(f"{what} has shape {array.shape}, expected a vector of labels", path)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        require_finite(array, what, path)
        if (array != np.round(array)).any():
            k = int(np.argmax(array != np.round(array)))
            raise GlaInputError(f"{what} entry {k} is {array[k]:g}, not an integer class index", path)
        return array.astype(np.int64)
    raise GlaInputError(f"{what} has dtype {array.dtype}, expected integer class indices", path)


def pick(entries: dict[str, Any], key: str | None, defaults: Sequence[str], path: Path, what: str,
         option: str, required: bool = False) -> str | None:
    """The entry to use: ``key`` if given, else the first default present, else (``required``) the
    only array that is not labels, ids or class names."""
    if key is not None:
        if key not in entries:
            raise GlaInputError(f"has no entry {key!r} ({option}); entries: {', '.join(sorted(entries)) or 'none'}",
                                path)
        return key
    lowered = {k.lower(): k for k in entries}
    for name in defaults:
        if name in lowered:
            return lowered[name]
    if required:
        if "" in entries:
            return ""
        known = {k.lower() for k in (*LABEL_KEYS, *ID_KEYS, *CLASSNAME_KEYS)}
        others = [k for k, v in entries.items()
                  if k.lower() not in known and not isinstance(v, (str, list, int, float))]
        if len(others) == 1:
            return others[0]
        raise GlaInputError(f"no {what} entry found (tried {', '.join(defaults)}); choose one with {option}; "
                            f"entries: {', '.join(sorted(entries)) or 'none'}", path)
    return None


def entry_classnames(entries: dict[str, Any], path: Path, key: str | None = None) -> list[str] | None:
    """The class names an archive carries under ``key`` (``--classnames-key``), else under one of
    :data:`CLASSNAME_KEYS`, as given (unchecked)."""
    name_key = pick(entries, key, CLASSNAME_KEYS, path, "classnames", "--classnames-key")
    if name_key is None:
        return None
    raw = entries[name_key]
    return np.asarray(raw).tolist() if isinstance(raw, np.ndarray) else list(raw)


def array_rows(path: Path, entries: dict[str, Any], value_key: str | None, labels_key: str | None,
               ids_key: str | None = None, classnames_key: str | None = None) -> RowSource:
    """The rows of an array entry (``value_key``; None for a bare ``.npy`` array, whose entries are
    empty) with the labels, ids and class names found beside it (or in the entries named)."""
    what = f"entry {value_key!r}" if value_key else "the array"
    values = require_numeric(entries[value_key or ""], what, path)
    if values.ndim != 2:
        raise GlaInputError(f"{what} has shape {values.shape}, expected 2 dimensions (rows x columns)", path)
    n_rows, n_cols = values.shape
    label_key = pick(entries, labels_key, LABEL_KEYS, path, "labels", "--labels-key")
    labels = None
    if label_key is not None:
        labels = as_labels(entries[label_key], path, f"entry {label_key!r}")
        if len(labels) != n_rows:
            raise GlaInputError(f"entry {label_key!r} has {len(labels)} labels for {n_rows} rows", path)
    id_key = pick(entries, ids_key, ID_KEYS, path, "ids", "--ids-key")
    ids = None
    if id_key is not None:
        ids = np.asarray(entries[id_key])
        if ids.ndim != 1 or len(ids) != n_rows:
            raise GlaInputError(f"entry {id_key!r} has shape {ids.shape}, expected {n_rows} ids", path)
    names = entry_classnames(entries, path, classnames_key)

    def chunks(rows: int) -> Chunks:
        for start in range(0, n_rows, rows):
            stop = min(start + rows, n_rows)
            block_ids = None if ids is None else [str(i) for i in ids[start:stop].tolist()]
            yield start, np.asarray(values[start:stop], dtype=np.float64), block_ids

    return RowSource(path, n_rows, n_cols, None if names is None else check_classnames(names, path), labels,
                     labels_from=f"entry {label_key!r}" if label_key else "none",
                     ids_from=f"entry {id_key!r}" if id_key else "generated",
                     classnames_from="the file", dtype=np.dtype(values.dtype), chunks=chunks)
