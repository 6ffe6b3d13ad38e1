"""The formats other tools write, one module each, behind one table per job.

    base.py         RowSource, ReadOptions and the entry names tried when the user names none
    npy.py          .npy arrays and .npz archives (with the streaming zip64 writer)
    pt.py           torch .pt / .pth files (and checkpoints' state dicts)
    safetensors.py  .safetensors files, read with NumPy
    head.py         classification heads: a checkpoint's <key>.weight / <key>.bias, or an array
    delimited.py    .csv / .tsv
    json_prior.py   priors as .json
    classnames.py   --classnames files (text or a JSON list)
    proportions.py  class proportions of an estimation set (estimate-prior --target FILE)

``gla import`` reads through :data:`ROW_READERS`, :data:`PRIOR_READERS` and :func:`head.read_head`
(whose suffixes are :data:`head.HEAD_SUFFIXES`), ``gla export`` writes
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
from glacli.io.formats.head import HEAD_SUFFIXES, HeadArrays
from glacli.io.formats.head import read_head as _read_head

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
IMPORT_SUFFIXES = tuple(dict.fromkeys([*PRIOR_READERS, *HEAD_SUFFIXES]))

WRITERS: dict[str, dict[str, Callable[[Any, Path], list[str]]]] = {
    "prior": {".json": json_prior.write_prior, ".npy": npy.write_prior, ".csv": delimited.write_prior},
    "logits": {".npy": npy.write_rows, ".npz": npy.write_rows_archive, ".csv": delimited.write_rows},
    "features": {".npy": npy.write_rows, ".npz": npy.write_rows_archive, ".csv": delimited.write_rows},
    "head": {".npz": npy.write_head, ".pt": pt.write_head},
}
"""gla kind -> suffix -> writer of what the gla file readers read (a Prior, a RowFile or a Head); returns the
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
        holds = "priors" if suffix in PRIOR_READERS else "heads"
        raise GlaInputError(f"{suffix} files hold {holds} only; import it with --kind {holds[:-1]}", path)
    return ROW_READERS[suffix](path, kind, options)


def read_head(path: Path, key: str | None, classnames_key: str | None) -> HeadArrays:
    """A classification head from a checkpoint (``<key>.weight`` after any prefix) or an array."""
    suffix = import_suffix(path)
    if suffix not in HEAD_SUFFIXES:
        raise GlaInputError(f"a head cannot be read from a {suffix} file; gla reads heads from "
                            f"{', '.join(HEAD_SUFFIXES)}", path)
    return _read_head(path, key, classnames_key)


def read_prior(path: Path, key: str | None) -> tuple[list[str] | None, Any, dict[str, Any]]:
    """(class names or None, prior values, attributes) from any supported file."""
    suffix = import_suffix(path)
    if suffix not in PRIOR_READERS:
        raise GlaInputError(f"{suffix} files hold heads only; import it with --kind head", path)
    return PRIOR_READERS[suffix](path, key)
