"""The formats other tools write, one module each, behind one table per job.

    base.py         RowSource, ReadOptions and the entry names tried when the user names none
    npy.py          .npy arrays and .npz archives (with the streaming zip64 writer)
    pt.py           torch .pt / .pth files
    delimited.py    .csv / .tsv
    json_prior.py   priors as .json
    classnames.py   --classnames files (text or a JSON list)
    proportions.py  class proportions of an estimation set (estimate-prior --target FILE)

``gla import`` reads through :data:`ROW_READERS` and :data:`PRIOR_READERS`, ``gla export`` writes
through :data:`WRITERS`; the services own what happens between (labels, class names, scales).
``classnames`` and ``proportions`` are read by the services that take those files, each through
its one reader.
A new format is one module and one line in each table it serves. Every problem with a foreign
file is a one-line :class:`~glacli.base.errors.GlaInputError` naming it; outputs are written atomically.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from glacli.base.errors import GlaInputError
from glacli.io.formats import delimited, json_prior, npy, pt
from glacli.io.formats.base import ReadOptions, RowSource, require_file

ROW_READERS: dict[str, Callable[[Path, str, ReadOptions], RowSource]] = {
    ".npy": npy.read_rows, ".npz": npy.read_rows, ".csv": delimited.read_rows, ".tsv": delimited.read_rows,
    ".pt": pt.read_rows, ".pth": pt.read_rows,
}
"""Suffix -> reader of a logits or features file."""
PRIOR_READERS: dict[str, Callable[[Path, str | None], tuple[list[str] | None, Any, dict[str, Any]]]] = {
    ".npy": npy.read_prior, ".npz": npy.read_prior, ".csv": delimited.read_prior, ".tsv": delimited.read_prior,
    ".pt": pt.read_prior, ".pth": pt.read_prior, ".json": json_prior.read_prior,
}
"""Suffix -> reader of a prior: (class names or None, values, attributes)."""
IMPORT_SUFFIXES = tuple(PRIOR_READERS)

WRITERS: dict[str, dict[str, Callable[[Any, Path], list[str]]]] = {
    "prior": {".json": json_prior.write_prior, ".npy": npy.write_prior, ".csv": delimited.write_prior},
    "logits": {".npy": npy.write_rows, ".npz": npy.write_rows_archive, ".csv": delimited.write_rows},
    "features": {".npy": npy.write_rows, ".npz": npy.write_rows_archive, ".csv": delimited.write_rows},
    "head": {".npz": npy.write_head, ".pt": pt.write_head},
}
"""gla kind -> suffix -> writer of what the store read (a Prior, a RowFile or a Head); returns the
names of what it wrote."""


def import_suffix(path: Path) -> str:
    """The suffix of a file to import, once it is known and the file exists."""
    suffix = path.suffix.lower()
    if suffix not in IMPORT_SUFFIXES:
        raise GlaInputError(f"unknown file type {suffix or '(no extension)'!r}; gla imports "
                            f"{', '.join(IMPORT_SUFFIXES)}", path)
    require_file(path)
    return suffix


def read_rows(path: Path, kind: str, options: ReadOptions) -> RowSource:
    """A foreign file's rows (logits or features), checked for shape; values come block by block."""
    suffix = import_suffix(path)
    if suffix not in ROW_READERS:
        raise GlaInputError(f"{suffix} files hold priors only; import it with --kind prior", path)
    return ROW_READERS[suffix](path, kind, options)


def read_prior(path: Path, key: str | None) -> tuple[list[str] | None, Any, dict[str, Any]]:
    """(class names or None, prior values, attributes) from any supported file."""
    return PRIOR_READERS[import_suffix(path)](path, key)
