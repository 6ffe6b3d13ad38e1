"""Every input check of gla, once, with one message per problem.

Commands and services call these first, before any file is written or any model is loaded, and
the readers of :mod:`glacli.io.rowfile`, :mod:`glacli.io.paramfile` and :mod:`glacli.io.formats` call them on what a file holds. A
failed check is a :class:`~glacli.base.errors.GlaInputError`: one line naming the file (or option) and
what is wrong, the same words wherever the problem is found. Pure: numpy and the standard
library only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Head

PRIOR_SUM_TOLERANCE = 1e-6
FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}
"""Stored feature precision (``--dtype``) -> numpy dtype."""
PLURALS = {"line": "lines", "entry": "entries", "class": "classes"}

PathLike = str | Path | None


# --------------------------------------------------------------------------- option values


def require_positive(value: Any, what: str, path: PathLike = None) -> float:
    """``value`` as a finite positive float: an option (``--tol``), an attribute (``temperature``) or
    a number from a file. The one positive-number rule of every temperature, penalty and scale."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise GlaInputError(f"{what}: expected a positive number, got {value!r}", path)
    return number


def require_count(value: int, option: str, minimum: int = 1) -> int:
    """An integer option of at least ``minimum`` (a batch size, a shot count, an iteration limit)."""
    if value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise GlaInputError(f"{option}: expected {expected}, got {value}")
    return value


def require_choice(value: str, choices: Sequence[str], option: str) -> str:
    """One of ``choices`` (a ``--method``, ``--kind`` or ``--dtype``)."""
    if value not in choices:
        raise GlaInputError(f"{option}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def feature_dtype(name: str) -> Any:
    """The numpy dtype of a ``--dtype`` name (float16 or float32)."""
    return FEATURE_DTYPES[require_choice(name, tuple(FEATURE_DTYPES), "--dtype")]


# --------------------------------------------------------------------------- arrays


def require_finite(values: np.ndarray, what: str, path: PathLike, row_offset: int = 0) -> None:
    """Refuse NaN or infinite values, naming the first one's row (or entry, for a vector)."""
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        where = f"row {row_offset + int(bad[0])}" if values.ndim > 1 else f"entry {int(bad[0])}"
        raise GlaInputError(f"'{what}' holds NaN or infinite values (first at {where})", path)


def require_numeric(array: Any, what: str, path: PathLike) -> np.ndarray:
    """An array of numbers (integers, floats or booleans), not text or objects."""
    array = np.asarray(array)
    if array.dtype.kind not in "fiub":
        raise GlaInputError(f"{what} has dtype {array.dtype}, expected numbers", path)
    return array


def require_positive_entries(values: np.ndarray, what: str, path: PathLike) -> None:
    """Every class needs a positive entry (a prior or class proportions: ``log`` must be finite)."""
    if (values <= 0).any():
        k = int(np.argmax(values <= 0))
        raise GlaInputError(f"{what} entry {k} is {values[k]:g}; every class needs a positive {what}", path)


def require_prior(prior: np.ndarray, path: PathLike) -> np.ndarray:
    """A prior given as probabilities: a non-empty vector, finite, positive, summing to 1."""
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim != 1 or prior.size == 0:
        raise GlaInputError(f"prior must be a non-empty vector, got shape {prior.shape}", path)
    require_finite(prior, "prior", path or "prior")
    require_positive_entries(prior, "prior", path)
    total = float(prior.sum())
    if abs(total - 1.0) > PRIOR_SUM_TOLERANCE:
        raise GlaInputError(f"prior sums to {total:.6g}, not 1", path)
    return prior


def require_log_prior(log_prior: np.ndarray, path: PathLike) -> np.ndarray:
    """A prior given in log space: a non-empty finite vector whose exponentials sum to 1."""
    log_prior = np.asarray(log_prior, dtype=np.float64)
    if log_prior.ndim != 1 or log_prior.size == 0:
        raise GlaInputError(f"log_prior must be a non-empty vector, got shape {log_prior.shape}", path)
    require_finite(log_prior, "log_prior", path or "prior")
    top = float(log_prior.max())
    total = math.exp(top) * float(np.exp(log_prior - top).sum())
    if abs(total - 1.0) > PRIOR_SUM_TOLERANCE:
        raise GlaInputError(f"exp(log_prior) sums to {total:.6g}, not 1", path)
    return log_prior


# --------------------------------------------------------------------------- labels


def labels_complete(labels: np.ndarray) -> bool:
    """True when there are rows and every one has a known label (none is -1)."""
    return bool(len(labels)) and bool((labels >= 0).all())


def require_labels(labels: np.ndarray, path: PathLike, purpose: str) -> np.ndarray:
    """``labels`` if all are known, else a one-line error naming ``path`` and what needed them."""
    unknown = int((labels < 0).sum())
    if unknown or not len(labels):
        what = "has no rows" if not len(labels) else f"has {unknown} of {len(labels)} rows without labels"
        raise GlaInputError(f"{what}; labels are needed {purpose}", path)
    return labels


def require_label_range(labels: np.ndarray, n_classes: int, path: PathLike, row_offset: int = 0) -> None:
    """Labels must be -1 (unknown) or a class index."""
    bad = (labels < -1) | (labels >= n_classes)
    if bad.any():
        k = int(np.argmax(bad))
        raise GlaInputError(f"label {int(labels[k])} at row {row_offset + k} is out of range for "
                            f"{n_classes} classes", path)


def require_every_class(labels: np.ndarray, classnames: Sequence[str], path: PathLike, purpose: str) -> np.ndarray:
    """The rows per class, if every class has some; else which class has none and why it must."""
    counts = np.bincount(labels, minlength=len(classnames))
    if (counts == 0).any():
        k = int(np.argmax(counts == 0))
        raise GlaInputError(f"class {classnames[k]!r} has no rows; {purpose}", path)
    return counts


# --------------------------------------------------------------------------- class names


def check_classnames(names: Sequence[str], path: PathLike, unit: str = "class") -> list[str]:
    """``names`` with surrounding whitespace stripped and repeats made distinct
    (:func:`disambiguate_classnames`); none or a blank one is refused.

    ``unit`` names the positions in messages: ``line`` (counted from 1) for a text file, ``entry``
    or ``class`` (counted from 0, as list indices are) otherwise.
    """
    names = [str(n).strip() for n in names]
    if not names:
        raise GlaInputError("holds no class names", path)
    if "" in names:
        raise GlaInputError(f"class name at {_at(unit, names.index(''))} is blank", path)
    distinct = disambiguate_classnames(names)
    require_unique(distinct, path, "class")  # a listed name that equals a renamed one, e.g. 'missile (744)'
    return distinct


def disambiguate_classnames(names: Sequence[str]) -> list[str]:
    """Repeated names made distinct, the same way everywhere: every occurrence after the first gets its
    class index (from 0), ``missile`` at 657 and 744 -> ``missile``, ``missile (744)``.

    Public ImageNet name lists (OpenAI's among them) name two pairs of distinct classes alike; the
    index keeps the result stable under any edit that does not move the class.
    """
    seen: set[str] = set()
    out = []
    for k, name in enumerate(names):
        out.append(f"{name} ({k})" if name in seen else name)
        seen.add(name)
    return out


def prompt_classnames(names: Sequence[str]) -> list[str]:
    """The names as listed before :func:`disambiguate_classnames`, for prompts ("a photo of a missile"):
    a name ``X (k)`` at index ``k`` whose ``X`` names an earlier class is read back as ``X``."""
    earlier: set[str] = set()
    out = []
    for k, name in enumerate(names):
        suffix = f" ({k})"
        base = name[:-len(suffix)] if name.endswith(suffix) else None
        out.append(base if base is not None and base in earlier else name)
        earlier.add(out[-1])
    return out


def renamed_classnames_note(names: Sequence[str]) -> str | None:
    """One note saying which repeated names :func:`disambiguate_classnames` renamed, or None."""
    renamed = [name for name, listed in zip(names, prompt_classnames(names)) if name != listed]
    if not renamed:
        return None
    shown = ", ".join(repr(n) for n in renamed[:4]) + (", ..." if len(renamed) > 4 else "")
    return (f"{len(renamed)} repeated class name{'s' if len(renamed) > 1 else ''} made distinct by "
            f"adding the class index: {shown} (prompts keep the names as listed)")


def require_unique(names: Sequence[str], path: PathLike, unit: str = "class") -> None:
    """Refuse a name that appears twice, saying where both are (``unit`` as in :func:`check_classnames`)."""
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            raise GlaInputError(f"class name {name!r} appears twice ({_at(unit, seen[name], k)})", path)
        seen[name] = k


def _at(unit: str, *positions: int) -> str:
    """``line 3``, ``entries 0 and 2``: lines count from 1, entries and classes from 0."""
    numbers = " and ".join(str(p + 1 if unit == "line" else p) for p in positions)
    return f"{unit if len(positions) == 1 else PLURALS[unit]} {numbers}"


def check_same_classnames(names: Sequence[str], path: PathLike, ref_names: Sequence[str], ref_path: PathLike) -> None:
    """Refuse two files whose classes differ (count, order or spelling)."""
    if len(names) != len(ref_names):
        raise GlaInputError(f"has {len(names)} classes but {ref_path} has {len(ref_names)}", path)
    for k, (a, b) in enumerate(zip(names, ref_names)):
        if a != b:
            raise GlaInputError(f"classnames disagree with {ref_path} (class {k}: {a!r} vs {b!r})", path)


def check_same_dimension(n_features: int, path: PathLike, ref_n_features: int, ref_path: PathLike) -> None:
    """Refuse features of another dimension than the reference file's."""
    if n_features != ref_n_features:
        raise GlaInputError(f"has {n_features}-dimensional features but {ref_path} has {ref_n_features}", path)


TEMPERATURE_MATCH = 1e-6
"""Relative difference below which two files count as having the same temperature applied."""


def check_same_temperature(temperature: float, path: PathLike, ref_temperature: float, ref_path: PathLike,
                           need: str) -> None:
    """Refuse two logits files at different scales where ``need`` (what the command does) needs one."""
    if not math.isclose(temperature, ref_temperature, rel_tol=TEMPERATURE_MATCH):
        raise GlaInputError(f"has temperature {temperature:g} already applied but {ref_path} has "
                            f"{ref_temperature:g}; {need}", path)


def check_head_fits(head: Head, head_path: PathLike, classnames: Sequence[str], n_features: int,
                    features_path: PathLike) -> None:
    """A head applies to features with its classes (same names, same order) and its dimension."""
    check_same_classnames(head.classnames, head_path, classnames, features_path)
    if head.weight.shape[1] != n_features:
        raise GlaInputError(f"head takes {head.weight.shape[1]}-dimensional features but {features_path} has "
                            f"{n_features}", head_path)
