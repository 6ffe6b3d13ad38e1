"""The HDF5 file kinds of gla: reading, validating, atomic writing and provenance.

Every service reads and writes gla files through this module, so the checks below (kind, format
version, completeness, shapes, dtypes, finite values, label range, temperatures, classnames and
ids that agree across files) are made once, on open, with the one-line messages of
:mod:`glacli.base.validation` naming the file. It also owns atomic writing, which every other writer
(formats, plots, the extraction's parts) goes through.

Layout (see docs/format.md): the root attribute ``gla_kind`` names the kind, ``gla_format``
its version; ``gla_version``, ``created``, ``gla_id`` and ``parents`` record provenance;
``gla_complete`` is set last, so a file whose writer died is never taken for a finished one.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import glob
import os
import re
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from glacli import __version__
from glacli.base import chunking
from glacli.base.errors import GlaInputError, one_line
from glacli.base.types import HEAD_TYPES, Head, Prior
from glacli.base.validation import (
    labels_complete,
    require_finite,
    require_label_range,
    require_labels,
    require_log_prior,
    require_positive,
    require_prior,
    require_unique,
)
from glacli.io import locks

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


# --------------------------------------------------------------------------- writing


def check_output_path(path: str | Path) -> Path:
    """Refuse an output path that cannot be written, naming it (call early, before the work)."""
    path = Path(path)
    if path.is_dir():
        raise GlaInputError("is a directory, not an output file", path)
    folder = path.parent
    if not folder.is_dir():
        raise GlaInputError(f"output folder {folder} does not exist", path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GlaInputError(f"cannot write to folder {folder} ({_unwritable_reason(folder)})", path)
    return path


def check_outputs(*paths: str | Path | None) -> list[Path]:
    """Every output of a command checked at once, before any work: writable, and no two the same."""
    checked = [check_output_path(p) for p in paths if p is not None and str(p) != "-"]
    seen: dict[Path, Path] = {}
    for path in checked:
        key = path.resolve()
        if key in seen:
            raise GlaInputError(f"is given as two different outputs ({seen[key]} and {path})", path)
        seen[key] = path
    return checked


def _unwritable_reason(folder: Path) -> str:
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "permission denied"


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>.*)$")
"""``.NAME.tmp-HOST-PID-XXXXXXXX.SUFFIX``: the temporary of :func:`atomic_output`, named by its writer."""


def _temporary_name(path: Path) -> str:
    return f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers on this host that are no longer running
    (killed before their rename); a live writer's temporary is left alone. Returns what was removed."""
    removed = []
    host = socket.gethostname()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        match = _TEMPORARY.match(candidate.name)
        if (match is None or match["name"] != path.name or match["host"] != host
                or _process_alive(int(match["pid"]))):
            continue
        with contextlib.suppress(OSError):
            candidate.unlink()
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path``, renamed over it only if the block succeeds.

    Every output of gla goes through this: a crash or an error never leaves a partial file, and
    an existing file stays untouched until the new one is whole. The temporary's name carries the
    host and pid of its writer (``.NAME.tmp-HOST-PID-XXXXXXXX.SUFFIX``), so that the next write of
    the same output removes the temporaries of writers that were killed; it keeps the suffix, for
    writers (like ``np.save``) that add one when it is missing. A file system that refuses the
    write (read-only, permission, no space) is one user error naming ``path``, not the temporary.
    """
    path = check_output_path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(_temporary_name(path))
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        raise GlaInputError(f"cannot write ({_os_reason(exc)})", path) from exc
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS or exc.filename not in (None, str(tmp)):  # not an input's error
            raise
        raise GlaInputError(f"cannot write ({_os_reason(exc)})", path) from exc
    finally:
        with contextlib.suppress(OSError):  # never let the clean-up hide the error that brought us here
            tmp.unlink(missing_ok=True)


_WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
"""Errors of the file system that refused an output (reported as user errors naming it)."""


def _os_reason(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else one_line(exc)


WRITER_BUSY = "another gla run is writing this output ({holder}); wait for it to finish"


@contextlib.contextmanager
def writer_lock(*paths: str | Path | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.NAME.lock`` beside each output for the whole run, so that two runs
    writing the same outputs cannot interleave them (one run's JSON beside the other's figure): a second
    writer is refused at once. The kernel drops the lock of a killed run; the next run takes its file."""
    with contextlib.ExitStack() as stack:
        for path in sorted({Path(p) for p in paths if p is not None and str(p) != "-"}):
            stack.enter_context(locks.output_lock(path, WRITER_BUSY))
        yield


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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


class RowSink:
    """Receives the rows of a features or logits file in chunks (see :func:`write_rows`)."""

    def __init__(self, f: h5py.File, kind: str, n_rows: int, n_cols: int, dtype: np.dtype):
        self.kind, self.n_rows, self.n_cols = kind, n_rows, n_cols
        chunk = (max(1, min(n_rows, chunking.storage_rows(n_cols, np.dtype(dtype).itemsize))), n_cols)
        self._values = f.create_dataset(kind, shape=(n_rows, n_cols), dtype=dtype,
                                        chunks=chunk if n_rows else None)
        self._labels = f.create_dataset("labels", shape=(n_rows,), dtype=np.int64)
        self._ids = f.create_dataset("ids", shape=(n_rows,), dtype=STRING_DTYPE)
        self.written = 0

    def write(self, start: int, values: np.ndarray, labels: np.ndarray, ids: Sequence[str]) -> None:
        stop = start + len(values)
        if not (len(labels) == len(ids) == len(values)) or stop > self.n_rows:
            raise ValueError("chunk does not fit the file")
        self._values[start:stop] = values
        self._labels[start:stop] = labels
        self._ids[start:stop] = np.array(list(ids), dtype=object)
        self.written += len(values)


@contextlib.contextmanager
def write_rows(path: str | Path, kind: str, *, n_rows: int, n_cols: int, classnames: Sequence[str],
               attrs: dict[str, Any] | None = None, parents: Iterable[str] = (),
               dtype: Any = np.float32) -> Iterator[RowSink]:
    """Stream a features or logits file: ``with write_rows(...) as sink: sink.write(start, ...)``."""
    if kind not in ROW_KINDS:
        raise ValueError(f"{kind!r} is not a row kind")
    if n_cols != len(classnames) and kind == "logits":
        raise ValueError("logits need one column per class")
    with atomic_h5(path, kind, parents, attrs) as f:
        write_strings(f, "classnames", classnames)
        sink = RowSink(f, kind, n_rows, n_cols, np.dtype(dtype))
        yield sink
        if sink.written != n_rows:
            raise RuntimeError(f"wrote {sink.written} of {n_rows} rows")


def write_logits(path: str | Path, logits: np.ndarray, labels: np.ndarray, ids: Sequence[str],
                 classnames: Sequence[str], attrs: dict[str, Any] | None = None,
                 parents: Iterable[str] = ()) -> None:
    """Write a whole in-memory logits array (``glacli.save``, small files, tests)."""
    attrs = {"temperature": 1.0, **(attrs or {})}
    with write_rows(path, "logits", n_rows=len(logits), n_cols=len(classnames), classnames=classnames,
                    attrs=attrs, parents=parents) as sink:
        step = chunking.io_rows(len(classnames))
        for start in range(0, len(logits), step):
            sl = slice(start, start + step)
            sink.write(start, np.asarray(logits[sl], dtype=np.float32), np.asarray(labels[sl]), ids[sl])


def write_features(path: str | Path, features: np.ndarray, labels: np.ndarray, ids: Sequence[str],
                   classnames: Sequence[str], attrs: dict[str, Any] | None = None,
                   parents: Iterable[str] = (), dtype: Any = np.float16) -> None:
    """Write a whole in-memory features array (rows are stored as given; callers normalise)."""
    with write_rows(path, "features", n_rows=len(features), n_cols=features.shape[1],
                    classnames=classnames, attrs=attrs, parents=parents, dtype=dtype) as sink:
        step = chunking.io_rows(features.shape[1])
        for start in range(0, len(features), step):
            sl = slice(start, start + step)
            sink.write(start, np.asarray(features[sl], dtype=dtype), np.asarray(labels[sl]), ids[sl])


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
        return _check_header(f, path, KINDS)


SHAPE_DATASETS = {"features": "features", "logits": "logits", "head": "weight", "prior": "prior"}
"""The dataset whose shape describes a file of each kind."""


def summary(path: str | Path) -> tuple[str, dict[str, Any], tuple[int, ...], int | None]:
    """A gla file's kind, attributes, shape (of its main dataset) and number of classes, read without
    loading any values; checked only as far as :func:`file_kind` checks."""
    kind = file_kind(path)
    with open_h5(path) as f, read_errors(path):
        main, names = f.get(SHAPE_DATASETS[kind]), f.get("classnames")
        shape = tuple(main.shape) if isinstance(main, h5py.Dataset) else ()
        n_classes = len(names) if isinstance(names, h5py.Dataset) else None
        return kind, get_attrs(f), shape, n_classes


def _check_header(f: h5py.File, path: str | Path, kinds: Sequence[str]) -> str:
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


def _dataset(f: h5py.File, name: str, path: str | Path, ndim: int, numeric: str | None = None) -> h5py.Dataset:
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


def _classnames(f: h5py.File, path: str | Path, n: int) -> list[str]:
    ds = _dataset(f, "classnames", path, 1)
    if ds.dtype.kind not in "OSU":
        raise GlaInputError("dataset 'classnames' is not text", path)
    if len(ds) != n:
        raise GlaInputError(f"has {len(ds)} classnames for {n} classes", path)
    names = read_strings(ds)
    require_unique(names, path)
    return names


def _temperature(attrs: dict[str, Any], name: str, path: str | Path) -> float:
    """A temperature attribute (1 when absent), which must be a positive number."""
    return require_positive(attrs.get(name, 1.0), f"{name} attribute", path)


@dataclass
class RowChunk:
    start: int
    stop: int
    values: np.ndarray
    labels: np.ndarray
    ids: list[str] | None = None


class RowFile:
    """A validated features or logits file whose rows are read in chunks.

    Small per-file data (classnames, labels, attributes) is loaded on open; the [N, D] values
    and the ids are read on demand, so memory does not grow with N. Use as a context manager.
    """

    def __init__(self, path: str | Path, kinds: Sequence[str] = ROW_KINDS):
        self.path = str(path)
        self._f = open_h5(path)
        try:
            with read_errors(path):
                self.kind = _check_header(self._f, path, kinds)
                self._values = _dataset(self._f, self.kind, path, 2, "float")
                self.n_rows, self.n_cols = self._values.shape
                labels_ds = _dataset(self._f, "labels", path, 1, "int")
                self._ids = _dataset(self._f, "ids", path, 1)
                for name, ds in (("labels", labels_ds), ("ids", self._ids)):
                    if len(ds) != self.n_rows:
                        raise GlaInputError(f"dataset '{name}' has {len(ds)} rows, '{self.kind}' has "
                                            f"{self.n_rows}", path)
                self.attrs = get_attrs(self._f)
                n_classes = self.n_cols if self.kind == "logits" else len(self._f.get("classnames", ()))
                self.classnames = _classnames(self._f, path, n_classes)
                self.labels = labels_ds[()].astype(np.int64)
                require_label_range(self.labels, len(self.classnames), path)
                self.temperature = _temperature(self.attrs, "temperature", path)
                """The temperature already applied to the values (1 if none)."""
        except BaseException:
            self._f.close()
            raise

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def gla_id(self) -> str:
        return str(self.attrs.get("gla_id", ""))

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype of the values (e.g. float16 features), for writers that keep it."""
        return np.dtype(self._values.dtype)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    @property
    def has_labels(self) -> bool:
        return labels_complete(self.labels)

    def require_labels(self, purpose: str) -> np.ndarray:
        """All labels, or a one-line error saying what needed them."""
        return require_labels(self.labels, self.path, purpose)

    def ids(self, start: int = 0, stop: int | None = None) -> list[str]:
        with read_errors(self.path):
            return read_strings(self._ids, start, stop)

    def read(self, start: int = 0, stop: int | None = None, dtype: Any = np.float32) -> np.ndarray:
        """Rows ``start:stop`` as ``dtype``, checked for NaN/inf."""
        with read_errors(self.path):
            values = self._values[start:stop].astype(dtype, copy=False)
        require_finite(values, self.kind, self.path, start)
        return values

    def iter_chunks(self, rows: int | None = None, with_ids: bool = False, dtype: Any = np.float32
                    ) -> Iterator[RowChunk]:
        rows = rows or chunking.io_rows(self.n_cols)
        for start in range(0, self.n_rows, rows):
            stop = min(start + rows, self.n_rows)
            yield RowChunk(start, stop, self.read(start, stop, dtype), self.labels[start:stop],
                           self.ids(start, stop) if with_ids else None)


def read_rows(path: str | Path, kind: str) -> RowFile:
    """Open a features or logits file of the given kind (``"features"`` or ``"logits"``)."""
    return RowFile(path, (kind,))


# --------------------------------------------------------------------------- small kinds


def _kind_attrs(attrs: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """A file's own attributes: what the caller carried over, then ``fixed``, minus provenance
    (which :func:`atomic_h5` writes anew)."""
    merged = {**attrs, **fixed}
    return {k: v for k, v in merged.items() if k not in PROVENANCE_ATTRS}


def _check_prior_pair(values: np.ndarray, log_values: np.ndarray, path: str | Path | None) -> None:
    """``prior`` must be ``exp(log_prior)``: two datasets that disagree mean a damaged or hand-edited file."""
    if values.shape != log_values.shape:
        raise GlaInputError(f"log_prior has shape {log_values.shape}, prior has {values.shape}", path)
    bad = ~np.isclose(values, np.exp(log_values), rtol=1e-9, atol=1e-300)
    if bad.any():
        k = int(np.argmax(bad))
        raise GlaInputError(f"prior and log_prior disagree at entry {k} ({values[k]:g} vs exp {log_values[k]:g})", path)


def write_prior(path: str | Path, prior: Prior, parents: Iterable[str] = (),
                datasets: dict[str, np.ndarray] | None = None) -> None:
    """Write ``log_prior`` (the exact solution, finite) and ``prior`` (its exp), and any other ``datasets``
    (e.g. ``fitted_id_hashes``)."""
    log_values = require_log_prior(prior.log_prior, None)
    _check_prior_pair(prior.prior, log_values, None)
    attrs = _kind_attrs(prior.attrs, {
        "temperature": require_positive(prior.temperature, "temperature"), "method": prior.method,
        "converged": bool(prior.converged), "max_moment_gap": float(prior.max_moment_gap),
        "iterations": int(prior.iterations),
        "logits_temperature": require_positive(prior.logits_temperature, "logits_temperature")})
    with atomic_h5(path, "prior", parents, attrs) as f:
        f.create_dataset("prior", data=np.asarray(prior.prior, dtype=np.float64))
        f.create_dataset("log_prior", data=log_values)
        write_strings(f, "classnames", prior.classnames)
        _write_datasets(f, datasets)


def read_prior(path: str | Path) -> Prior:
    """A prior file; ``log_prior`` is read where present (older files have ``prior`` only)."""
    with open_h5(path) as f, read_errors(path):
        _check_header(f, path, ("prior",))
        values = _dataset(f, "prior", path, 1, "float")[()].astype(np.float64)
        log_values = (_dataset(f, "log_prior", path, 1, "float")[()].astype(np.float64)
                      if "log_prior" in f else None)
        classnames = _classnames(f, path, len(values))
        attrs = get_attrs(f)
    if log_values is None:
        require_prior(values, path)
    else:
        require_log_prior(log_values, path)
        _check_prior_pair(values, log_values, path)
    return Prior(prior=values, classnames=classnames, temperature=_temperature(attrs, "temperature", path),
                 method=str(attrs.get("method", "")), converged=bool(attrs.get("converged", True)),
                 max_moment_gap=float(attrs.get("max_moment_gap", 0.0)),
                 iterations=int(attrs.get("iterations", 0)), attrs=attrs, log_prior=log_values,
                 logits_temperature=_temperature(attrs, "logits_temperature", path))


def write_head(path: str | Path, head: Head, parents: Iterable[str] = (),
               datasets: dict[str, np.ndarray] | None = None) -> None:
    weight = np.asarray(head.weight, dtype=np.float32)
    bias = np.asarray(head.bias, dtype=np.float32)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(head.classnames) != weight.shape[0]:
        raise ValueError("head weight [C, D], bias [C] and classnames [C] do not agree")
    if head.head_type not in HEAD_TYPES:
        raise ValueError(f"unknown head_type {head.head_type!r}")
    attrs = _kind_attrs(head.attrs, {"head_type": head.head_type,
                                     "temperature": require_positive(head.temperature, "temperature")})
    with atomic_h5(path, "head", parents, attrs) as f:
        f.create_dataset("weight", data=weight)
        f.create_dataset("bias", data=bias)
        write_strings(f, "classnames", head.classnames)
        _write_datasets(f, datasets)


def _write_datasets(f: h5py.File, datasets: dict[str, np.ndarray] | None) -> None:
    """Datasets a writer adds beside a kind's own (compressed: they may hold a value per row)."""
    for name, values in (datasets or {}).items():
        values = np.asarray(values)
        f.create_dataset(name, data=values, **({"compression": "gzip", "shuffle": True} if values.size > 1024 else {}))


def read_head(path: str | Path) -> Head:
    with open_h5(path) as f, read_errors(path):
        _check_header(f, path, ("head",))
        weight = _dataset(f, "weight", path, 2, "float")[()].astype(np.float32)
        bias = _dataset(f, "bias", path, 1, "float")[()].astype(np.float32)
        classnames = _classnames(f, path, weight.shape[0])
        attrs = get_attrs(f)
    if bias.shape != (weight.shape[0],):
        raise GlaInputError(f"bias has shape {bias.shape}, weight has {weight.shape[0]} classes", path)
    require_finite(weight, "weight", path)
    require_finite(bias, "bias", path)
    return Head(weight=weight, bias=bias, classnames=classnames, head_type=str(attrs.get("head_type", "")),
                temperature=_temperature(attrs, "temperature", path), attrs=attrs)


# --------------------------------------------------------------------------- across files


def check_same_rows(a: RowFile, b: RowFile) -> None:
    """Refuse two row files that do not hold the same samples in the same order (ids, labels)."""
    if a.n_rows != b.n_rows:
        raise GlaInputError(f"has {a.n_rows} rows but {b.path} has {b.n_rows}", a.path)
    step = chunking.text_rows()
    for start in range(0, a.n_rows, step):
        ids_a, ids_b = a.ids(start, start + step), b.ids(start, start + step)
        if ids_a != ids_b:
            k = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y)
            raise GlaInputError(f"ids disagree with {b.path} at row {start + k} "
                                f"({ids_a[k]!r} vs {ids_b[k]!r})", a.path)
    check_same_labels(a.labels, a.path, b.labels, b.path)


def check_same_labels(labels: np.ndarray, path: str | Path, ref_labels: np.ndarray, ref_path: str | Path) -> None:
    """Refuse labels of the same rows that disagree with ``ref_labels`` where both are known (not -1)."""
    bad = (labels >= 0) & (ref_labels >= 0) & (labels != ref_labels)
    if bad.any():
        k = int(np.argmax(bad))
        raise GlaInputError(f"labels disagree with {ref_path} at row {k} ({labels[k]} vs {ref_labels[k]})", path)
