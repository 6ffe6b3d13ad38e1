"""NumPy files: ``.npy`` arrays and ``.npz`` archives, read and written in blocks.

Reading memory-maps ``.npy`` files, so rows are sliced block by block (an ``.npz`` entry is
necessarily loaded whole). Writing streams too: a rows ``.npy`` is a memory-mapped file filled
block by block, and a rows ``.npz`` is written member by member through a zip64 writer of our own
(:func:`_write_member`), since ``np.savez`` needs every array in memory at once.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.io.formats.base import (
    VALUE_KEYS,
    ReadOptions,
    RowSource,
    array_rows,
    as_labels,
    entry_classnames,
    pick,
    require_file,
)
from glacli.base.types import Head, Prior
from glacli.io.outputs import atomic_output
from glacli.io.rowfile import RowFile


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise GlaInputError(f"cannot be read as .npy ({exc})", path) from exc
    except OSError as exc:
        raise GlaInputError(f"cannot be read as .npy (truncated or corrupt): {exc}", path) from exc


class _NpzEntries(dict):
    """Read-only view of an NpzFile that loads an entry when indexed and turns pickled or corrupt
    entries into one-line errors."""

    def __init__(self, data: Any, path: Path):
        super().__init__((k, None) for k in data.files)
        self._data, self._path = data, path

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._data[key]
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise GlaInputError(f"entry {key!r} cannot be read: {exc}", self._path) from exc


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All entries of an .npz file as a lazy mapping."""
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise GlaInputError(f"cannot be read as .npz: {exc}", path) from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise GlaInputError("is a single .npy array, not an .npz archive", path)
    return _NpzEntries(data, path)


def read_rows(path: Path, kind: str, options: ReadOptions) -> RowSource:
    """Rows of a ``.npy`` array, or of an ``.npz`` entry (``--key``, else the kind's usual names)."""
    if path.suffix.lower() == ".npy":
        return array_rows(path, {"": load_npy(path)}, None, options.labels_key, options.ids_key, options.classnames_key)
    entries = load_npz(path)
    value_key = pick(entries, options.key, VALUE_KEYS[kind], path, kind, "--key", required=True)
    return array_rows(path, entries, value_key, options.labels_key, options.ids_key, options.classnames_key)


def read_prior(path: Path, key: str | None) -> tuple[list[str] | None, Any, dict[str, Any]]:
    """(class names or None, prior values, attributes) of a ``.npy`` vector or an ``.npz`` entry."""
    if path.suffix.lower() == ".npy":
        return None, load_npy(path), {}
    entries = load_npz(path)
    value_key = pick(entries, key, VALUE_KEYS["prior"], path, "prior", "--key", required=True)
    return entry_classnames(entries, path), entries[value_key], {}


def read_labels(path: Path, n_rows: int) -> np.ndarray:
    """The ``--labels`` file of an import: a ``.npy`` vector of class indices, one per row."""
    if path.suffix.lower() != ".npy":
        raise GlaInputError("--labels expects a .npy file of class indices", path)
    require_file(path)
    labels = as_labels(load_npy(path), path, "the labels")
    if len(labels) != n_rows:
        raise GlaInputError(f"holds {len(labels)} labels for {n_rows} rows", path)
    return labels


# --------------------------------------------------------------------------- writing


def write_rows(src: RowFile, output: Path) -> list[str]:
    """The values of a features or logits file as one ``.npy`` array, in their stored dtype."""
    dtype = src.dtype
    with atomic_output(output) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(src.n_rows, src.n_cols))
        for chunk in src.iter_chunks(dtype=dtype):
            array[chunk.start:chunk.stop] = chunk.values
        array.flush()
        del array
    return [src.kind]


def write_rows_archive(src: RowFile, output: Path) -> list[str]:
    """Values, labels, ids and class names of a features or logits file as an ``.npz`` archive."""
    dtype = src.dtype
    step = chunking.text_rows()
    id_windows = [(s, s + step) for s in range(0, src.n_rows, step)]
    id_width = max([1] + [max((len(i) for i in src.ids(a, b)), default=1) for a, b in id_windows])
    id_dtype = np.dtype(f"<U{id_width}")
    names = np.array(src.classnames, dtype=str)
    with atomic_output(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        _write_member(zf, src.kind, dtype, (src.n_rows, src.n_cols),
                      (c.values for c in src.iter_chunks(chunking.io_rows(src.n_cols), dtype=dtype)))
        _write_member(zf, "labels", np.dtype(np.int64), (src.n_rows,), [src.labels])
        _write_member(zf, "ids", id_dtype, (src.n_rows,), (np.array(src.ids(a, b), dtype=id_dtype) for a, b in id_windows))
        _write_member(zf, "classnames", names.dtype, names.shape, [names])
    return [src.kind, "labels", "ids", "classnames"]


def _write_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...],
                  blocks: Iterable[np.ndarray]) -> None:
    """One .npy member of an .npz archive, written block by block (zip64, so any size)."""
    with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_2_0(
            fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        for block in blocks:
            fh.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def write_prior(prior: Prior, output: Path) -> list[str]:
    """The prior vector q as a ``.npy`` array."""
    with atomic_output(output) as tmp, open(tmp, "wb") as fh:
        np.save(fh, prior.prior)
    return ["prior"]


def write_head(head: Head, output: Path) -> list[str]:
    """A head's weight, bias, class names, temperature and type as an ``.npz`` archive."""
    with atomic_output(output) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, weight=head.weight, bias=head.bias, classnames=np.array(head.classnames, dtype=str),
                 temperature=np.float64(head.temperature), head_type=np.array(head.head_type))
    return ["weight", "bias", "classnames", "temperature", "head_type"]
