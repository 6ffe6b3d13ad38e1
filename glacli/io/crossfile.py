"""Checks across files: two files that must describe the same samples in the same order."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.io.rowfile import RowFile


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
