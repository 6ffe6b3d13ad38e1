"""The summary ``gla info`` prints: a file's kind, attributes and shape, read without its values."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py

from glacli.io.h5file import file_kind, get_attrs, open_h5, read_errors


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
