"""The row kinds, features and logits: written in chunks, read in chunks, so that memory does not
grow with the number of rows (docs/format.md)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.base.validation import labels_complete, require_finite, require_label_range, require_labels
from glacli.io.h5file import (
    ROW_KINDS,
    STRING_DTYPE,
    atomic_h5,
    check_header,
    get_attrs,
    open_h5,
    read_classnames,
    read_errors,
    read_strings,
    read_temperature,
    require_dataset,
    write_strings,
)


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
                self.kind = check_header(self._f, path, kinds)
                self._values = require_dataset(self._f, self.kind, path, 2, "float")
                self.n_rows, self.n_cols = self._values.shape
                labels_ds = require_dataset(self._f, "labels", path, 1, "int")
                self._ids = require_dataset(self._f, "ids", path, 1)
                for name, ds in (("labels", labels_ds), ("ids", self._ids)):
                    if len(ds) != self.n_rows:
                        raise GlaInputError(f"dataset '{name}' has {len(ds)} rows, '{self.kind}' has "
                                            f"{self.n_rows}", path)
                self.attrs = get_attrs(self._f)
                n_classes = self.n_cols if self.kind == "logits" else len(self._f.get("classnames", ()))
                self.classnames = read_classnames(self._f, path, n_classes)
                self.labels = labels_ds[()].astype(np.int64)
                require_label_range(self.labels, len(self.classnames), path)
                self.temperature = read_temperature(self.attrs, "temperature", path)
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
