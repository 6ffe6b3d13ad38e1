"""The rows a prior or a head was fitted on, kept as a set of row hashes, so that later commands can count
the rows they are given that the fit has already seen (leakage: such rows overstate accuracy).

A prior file (``gla estimate-prior``: the logits rows) and a head file (``gla fit``: the training and
validation features rows) hold the dataset ``fitted_id_hashes``: the sorted, distinct 64-bit FNV-1a
hashes of each row's id (its UTF-8 bytes) followed by a digest of its values (docs/format.md). The
digest tells apart two files that merely number their rows alike (CSV exports whose ids restart at 0
in every split); it is invariant to the row's scale and shift, so logits at another temperature still
match. Eight bytes a row, whatever the ids' length; unrelated rows share a hash with probability about
2^-64 per pair, so a count is exact in practice.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from glacli.io.h5file import open_h5
from glacli.io.rowfile import RowFile

DATASET = "fitted_id_hashes"
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
DIGEST_BINS = 100.0
"""Resolution of the value digest: a row's centred, unit-length values projected on two fixed random
directions, rounded to 1/DIGEST_BINS (float32 rounding of the same row moves a projection by ~1e-7)."""
DIGEST_ROWS = 1024


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """FNV-1a 64 of each id's UTF-8 bytes, vectorised over the ids (one step per byte position)."""
    if len(ids) == 0:
        return np.empty(0, np.uint64)
    encoded = np.char.encode(np.asarray(ids, dtype=str), "utf-8")
    width = encoded.dtype.itemsize
    data = np.frombuffer(encoded.tobytes(), np.uint8).reshape(len(encoded), width)
    lengths = np.char.str_len(encoded)
    hashes = np.full(len(encoded), FNV_OFFSET, np.uint64)
    for position in range(width):
        step = (hashes ^ data[:, position].astype(np.uint64)) * FNV_PRIME
        hashes = np.where(lengths > position, step, hashes)
    return hashes


def row_hashes(ids: Sequence[str], values: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of each id's UTF-8 bytes continued over the 16 little-endian bytes of its value digest:
    ``rint(DIGEST_BINS * u @ R)`` as int64, ``u`` the row minus its mean, divided by its norm (zero rows
    stay zero), ``R = numpy.random.default_rng(D).standard_normal((D, 2))`` for rows of D values."""
    hashes = id_hashes(ids)
    digest = np.rint(unit_projection(np.asarray(values)) * DIGEST_BINS).astype("<i8")
    data = np.frombuffer(np.ascontiguousarray(digest).tobytes(), np.uint8).reshape(len(digest), 16)
    for position in range(16):
        hashes = (hashes ^ data[:, position].astype(np.uint64)) * FNV_PRIME
    return hashes


def unit_projection(values: np.ndarray) -> np.ndarray:
    """``u @ R`` without forming ``u``: ``(x @ R - mean(x) 1^T R) / |x - mean(x)|``, the projection in
    float32 BLAS and the mean and norm in float64 (a projection is then off by ~1e-6, against bins
    of 1e-2). Rows whose spread is below float64 rounding of their squares count as constant (0)."""
    if values.dtype != np.float64:
        values = values.astype(np.float32, copy=False)
    n_values = values.shape[1]
    projection = np.random.default_rng(n_values).standard_normal((n_values, 2))
    sums, squares = np.empty(len(values)), np.empty(len(values))
    for start in range(0, len(values), DIGEST_ROWS):  # float64 copies of a few rows: faster than mixed types
        block = values[start:start + DIGEST_ROWS].astype(np.float64)
        sums[start:start + len(block)] = block.sum(1)
        squares[start:start + len(block)] = np.einsum("ij,ij->i", block, block)
    mean = sums / n_values
    spread = squares - n_values * mean * mean
    projected = (values @ projection.astype(values.dtype)).astype(np.float64) - mean[:, None] * projection.sum(0)
    constant = spread <= 1e-12 * squares
    norm = np.sqrt(np.where(constant, 1.0, spread))
    return np.where(constant[:, None], 0.0, projected / norm[:, None])


def hash_rows(files: Iterable[RowFile]) -> np.ndarray:
    """The sorted distinct row hashes of every row of ``files``, read in blocks."""
    parts = [row_hashes(chunk.ids, chunk.values) for rows in files for chunk in rows.iter_chunks(with_ids=True)]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)


def read_hashes(path: str | Path) -> np.ndarray | None:
    """The ``fitted_id_hashes`` of a prior or head file; None where it records none (older files, imports)."""
    with open_h5(path) as f:
        ds = f.get(DATASET)
        return None if ds is None else np.asarray(ds[()], dtype=np.uint64)


def count_fitted(rows: RowFile, hashes: np.ndarray | None) -> int:
    """How many rows of ``rows`` have their hash among ``hashes`` (sorted); 0 without hashes."""
    if hashes is None or len(hashes) == 0:
        return 0
    found = 0
    for chunk in rows.iter_chunks(with_ids=True):
        block = row_hashes(chunk.ids, chunk.values)
        at = np.minimum(np.searchsorted(hashes, block), len(hashes) - 1)
        found += int((hashes[at] == block).sum())
    return found
