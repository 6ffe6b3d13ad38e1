"""Class proportions ``f`` of an estimation set (``estimate-prior --target FILE``), in any of four forms.

A gla prior file (``.h5``), a JSON list or ``{"classnames": [...], "prior" (or "proportions"): [...]}``,
a ``.npy`` vector, or text with one number per line. Only the ratios matter, so the values are
normalised to sum to 1; every class needs a positive share, since ``log f`` enters the estimate.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from glacli import store
from glacli.errors import GlaInputError
from glacli.validation import check_same_classnames, require_finite

Proportions = tuple[np.ndarray, list[str] | None]
"""(values, the class names the file gives or None)."""


def _from_prior_file(path: Path) -> Proportions:
    prior = store.read_prior(path)
    return prior.prior, prior.classnames


def _from_json(path: Path) -> Proportions:
    data = json.loads(path.read_text())
    names = None
    if isinstance(data, dict):
        names = data.get("classnames")
        data = data.get("prior", data.get("proportions"))
    return np.asarray(data, dtype=np.float64), names


def _from_npy(path: Path) -> Proportions:
    return np.load(path, allow_pickle=False).astype(np.float64), None


def _from_text(path: Path) -> Proportions:
    return np.loadtxt(path, dtype=np.float64, ndmin=1), None


READERS: dict[str, Callable[[Path], Proportions]] = {
    ".h5": _from_prior_file, ".hdf5": _from_prior_file, ".json": _from_json, ".npy": _from_npy,
}
"""Suffix -> reader; any other suffix is read as text, one number per line."""


def read_proportions(path: Path, classnames: Sequence[str]) -> np.ndarray:
    """The proportions in ``path`` for ``classnames`` (checked against the names the file gives),
    positive and normalised to sum to 1."""
    try:
        values, names = READERS.get(path.suffix.lower(), _from_text)(path)
    except (ValueError, TypeError, OSError) as exc:
        raise GlaInputError(f"cannot read class proportions: {exc}", path) from exc
    if names is not None:
        check_same_classnames(names, path, classnames, "the logits")
    if values.ndim != 1 or len(values) != len(classnames):
        raise GlaInputError(f"holds {values.size} proportions for {len(classnames)} classes", path)
    require_finite(values, "proportions", path)
    if (values <= 0).any():
        raise GlaInputError("class proportions must all be positive", path)
    return values / values.sum()
