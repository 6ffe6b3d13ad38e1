"""What every gla HDF5 file shares: its header (kind, format version, provenance, completeness),
UTF-8 attributes and strings, and opening and checking it with one-line errors naming the file.

Layout (see docs/format.md): the root attribute ``gla_kind`` names the kind, ``gla_format``
its version; ``gla_version``, ``created``, ``gla_id`` and ``parents`` record provenance;
``gla_complete`` is set last, so a file whose writer died is never taken for a finished one.
The kinds themselves are in :mod:`glacli.io.rowfile` (features, logits) and :mod:`glacli.io.paramfile`
(prior, head).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from glacli import __version__
from glacli.base.errors import GlaInputError, one_line
from glacli.base.validation import require_positive, require_unique
from glacli.io.outputs import atomic_output

FORMAT_VERSION = 1
KINDS = ("features", "head", "logits", "prior")
ROW_KINDS = ("features", "logits")
COMPLETE_ATTR = "gla_complete"
PROVENANCE_ATTRS = ("gla_kind", "gla_format", "gla_version", "created", "gla_id", "parents", COMPLETE_ATTR)
STRING_DTYPE = h5py.string_dtype("utf-8")


def provenance_attrs(kind: str, parents: Iterable[str] = ()) -> dict[str, Any]:
    """The root attributes every gla file carries; ``gla_complete`` is added on close."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    return {
        "gla_kind": kind,
        "gla_format": FORMAT_VERSION,
        "gla_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "gla_id": uuid.uuid4().hex,
        "parents": [p for p in parents if p],
    }


def set_attrs(f: h5py.File | h5py.Group, attrs: dict[str, Any]) -> None:
    """Write attributes, storing text and lists of text as UTF-8 strings."""
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            if all(isinstance(v, str) for v in value):
                f.attrs.create(key, np.array(list(value), dtype=object), dtype=STRING_DTYPE)
            else:
                f.attrs[key] = np.asarray(value)
        elif isinstance(value, str):
            f.attrs.create(key, value, dtype=STRING_DTYPE)
        else:
            f.attrs[key] = value


def get_attrs(f: h5py.File | h5py.Group) -> dict[str, Any]:
    """Attributes as plain Python values (str, int, float, bool, list)."""
    out: dict[str, Any] = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, np.ndarray):
            value = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()]
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def write_strings(group: h5py.File | h5py.Group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STRING_DTYPE)


def read_strings(ds: h5py.Dataset, start: int = 0, stop: int | None = None) -> list[str]:
    return list(ds.asstr()[start:stop])


@contextlib.contextmanager
def atomic_h5(path: str | Path, kind: str, parents: Iterable[str] = (), attrs: dict[str, Any] | None = None
              ) -> Iterator[h5py.File]:
    """Open a new gla file of ``kind`` for writing; it appears at ``path`` only if the block succeeds.

    ``gla_complete`` is set last, just before the file is closed and renamed into place.
    """
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            set_attrs(f, provenance_attrs(kind, parents))
            set_attrs(f, attrs or {})
            yield f
            f.attrs[COMPLETE_ATTR] = True


# --------------------------------------------------------------------------- reading


def open_h5(path: str | Path) -> h5py.File:
    """Open an existing HDF5 file for reading, turning every way it can fail into one line."""
    path = Path(path)
    if not path.exists():
        raise GlaInputError("no such file", path)
    if path.is_dir():
        raise GlaInputError("is a directory, not an HDF5 file", path)
    try:
        if not h5py.is_hdf5(path):
            raise GlaInputError("not an HDF5 file (convert it with `gla import`)", path)
        return h5py.File(path, "r")
    except OSError as exc:
        raise GlaInputError(f"cannot be read as HDF5 (truncated or corrupt): {exc}", path) from exc


@contextlib.contextmanager
def read_errors(path: str | Path) -> Iterator[None]:
    """Turn an error of the HDF5 library while reading ``path`` (a damaged file, a temporary left by a
    killed writer: "Can't synchronously read data") into one user error naming the file."""
    try:
        yield
    except OSError as exc:
        raise GlaInputError(f"cannot be read as HDF5 (truncated or corrupt): {one_line(exc)}", path) from exc


def file_kind(path: str | Path) -> str:
    """The ``gla_kind`` of a file, after the same checks every reader makes."""
    with open_h5(path) as f, read_errors(path):
        return check_header(f, path, KINDS)


def check_header(f: h5py.File, path: str | Path, kinds: Sequence[str]) -> str:
    """The file's kind, once it is one of ``kinds``, of a format this version reads, and complete."""
    kind = f.attrs.get("gla_kind")
    if kind is None:
        raise GlaInputError("not a gla file (no 'gla_kind' attribute)", path)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind not in kinds:
        wanted = " or ".join(f"'{k}'" for k in kinds)
        raise GlaInputError(f"is a '{kind}' file, expected {wanted}", path)
    version = int(f.attrs.get("gla_format", 0))
    if not 1 <= version <= FORMAT_VERSION:
        raise GlaInputError(f"gla_format {version} is not supported by gla {__version__}", path)
    if not bool(f.attrs.get(COMPLETE_ATTR, False)):
        raise GlaInputError("is incomplete (its writer did not finish; re-run the command that makes it)", path)
    return kind


def require_dataset(f: h5py.File, name: str, path: str | Path, ndim: int, numeric: str | None = None
                    ) -> h5py.Dataset:
    """Dataset ``name`` (not yet read), refused unless it has ``ndim`` dimensions and, when asked, a
    ``"float"`` or ``"int"`` dtype."""
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset):
        raise GlaInputError(f"missing dataset '{name}'", path)
    if ds.ndim != ndim:
        raise GlaInputError(f"dataset '{name}' has {ds.ndim} dimensions, expected {ndim}", path)
    if numeric == "float" and ds.dtype.kind != "f":
        raise GlaInputError(f"dataset '{name}' has dtype {ds.dtype}, expected floating point", path)
    if numeric == "int" and ds.dtype.kind not in "iu":
        raise GlaInputError(f"dataset '{name}' has dtype {ds.dtype}, expected integers", path)
    return ds


def read_classnames(f: h5py.File, path: str | Path, n: int) -> list[str]:
    """The file's ``n`` class names, text and distinct."""
    ds = require_dataset(f, "classnames", path, 1)
    if ds.dtype.kind not in "OSU":
        raise GlaInputError("dataset 'classnames' is not text", path)
    if len(ds) != n:
        raise GlaInputError(f"has {len(ds)} classnames for {n} classes", path)
    names = read_strings(ds)
    require_unique(names, path)
    return names


def read_temperature(attrs: dict[str, Any], name: str, path: str | Path) -> float:
    """A temperature attribute (1 when absent), which must be a positive number."""
    return require_positive(attrs.get(name, 1.0), f"{name} attribute", path)
