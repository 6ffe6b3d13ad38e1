"""Class distributions read for a purpose: the proportions ``f`` of an estimation set
(``estimate-prior --target FILE``), and prior files in the role a command gives them.

Proportions come in any of four forms: a gla prior file (``.h5``), a JSON list or
``{"classnames": [...], "prior" (or "proportions"): [...]}``, a ``.npy`` vector, or text with one
number per line. Only the ratios matter, so the values are normalised to sum to 1; every class
needs a positive share, since their log enters the model.

A prior file holds either a pre-training ``q`` or a test label distribution ``pi_t`` (``method``
``mlls``/``bbse``, from ``gla estimate-target``); :func:`read_pretraining_prior` and
:func:`read_target_distribution` refuse the other kind, with the same words in every command.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Prior
from glacli.base.validation import check_same_classnames, require_finite, require_positive_entries
from glacli.core.label_shift import TARGET_METHODS
from glacli.io.paramfile import read_prior

Proportions = tuple[np.ndarray, list[str] | None]
"""(values, the class names the file gives or None)."""


def _from_prior_file(path: Path) -> Proportions:
    prior = read_prior(path)
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
    except GlaInputError:  # a prior file's own message (a ValueError too), kept as it is
        raise
    except (ValueError, TypeError, OSError) as exc:
        raise GlaInputError(f"cannot read class proportions: {exc}", path) from exc
    return check_proportions(values, names, path, classnames)


def check_proportions(values: np.ndarray, names: Sequence[str] | None, path: Path, classnames: Sequence[str],
                      ref: str = "the logits") -> np.ndarray:
    """``values`` as proportions of ``classnames``: the file's class names (if it gives any) must be
    those of ``ref``, one finite positive entry per class; normalised to sum to 1."""
    if names is not None:
        check_same_classnames(names, path, classnames, ref)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(classnames):
        raise GlaInputError(f"holds {values.size} proportions for {len(classnames)} classes", path)
    require_finite(values, "proportions", path)
    require_positive_entries(values, "proportions", path)
    return values / values.sum()


def read_pretraining_prior(path: Path) -> Prior:
    """A prior file holding a pre-training ``q`` (``--prior``); a test label distribution is refused."""
    prior = read_prior(path)
    if prior.method in TARGET_METHODS:
        raise GlaInputError(f"holds a test label distribution (method {prior.method}, from gla estimate-target), "
                            "not a pre-training prior q: give it to --target-prior", path)
    return prior


def read_target_distribution(path: Path) -> Prior:
    """A prior file holding a test label distribution ``pi_t`` (``--target-prior``); a ``q`` is refused."""
    prior = read_prior(path)
    if prior.method not in TARGET_METHODS:
        raise GlaInputError(f"holds a pre-training prior q (method {prior.method}), not a test label "
                            "distribution: give it to --prior, and estimate pi_t with gla estimate-target", path)
    return prior
