"""Few-shot splits: class-balanced, deterministic selections of rows by label (pure, no I/O).

Within each class the rows are put in one random order drawn from ``seed``; validation takes
the first ``val_shots`` of that order, training the next ``shots``, and the rest is left over.
Because validation comes first, the validation set does not change with ``shots``, and the
training set for K shots is contained in the one for K' > K (same seed and ``val_shots``), so
results over shot counts compare like with like.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class NotEnoughRows(ValueError):
    """A class holds fewer rows than ``shots + val_shots``."""

    def __init__(self, class_index: int, available: int, needed: int):
        self.class_index, self.available, self.needed = class_index, available, needed
        super().__init__(f"class {class_index} has {available} rows, {needed} needed")


@dataclass
class Split:
    """Row indices (ascending, so the original order is kept) of the three disjoint parts."""

    train: np.ndarray
    val: np.ndarray
    rest: np.ndarray


def few_shot_split(labels: np.ndarray, n_classes: int, shots: int, seed: int, val_shots: int = 0,
                   allow_fewer: bool = False) -> Split:
    """Split rows into ``shots`` training and ``val_shots`` validation rows per class, and the rest.

    Parameters
    ----------
    labels : [N] int, class indices in ``0..n_classes-1`` (every row labelled).
    shots, val_shots : rows per class for training and validation (``shots >= 1``, ``val_shots >= 0``).
    seed : the random order within each class is ``default_rng(seed)``'s permutation of the rows.
    allow_fewer : a class with fewer than ``shots + val_shots`` rows gives what it has (validation
        first) instead of raising :class:`NotEnoughRows`.

    Returns a :class:`Split` whose parts are disjoint, sorted, and together cover every row.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if shots < 1 or val_shots < 0:
        raise ValueError("shots must be >= 1 and val_shots >= 0")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError("labels must be class indices in 0..n_classes-1")
    counts = np.bincount(labels, minlength=n_classes)
    needed = shots + val_shots
    if not allow_fewer and (counts < needed).any():
        k = int(np.argmax(counts < needed))
        raise NotEnoughRows(k, int(counts[k]), needed)

    order = np.random.default_rng(seed).permutation(labels.size)
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within class
    class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(labels.size, dtype=np.int64)
    rank[order] = np.arange(labels.size) - class_start[labels[order]]

    val = rank < val_shots
    train = (rank >= val_shots) & (rank < needed)
    return Split(train=np.flatnonzero(train), val=np.flatnonzero(val), rest=np.flatnonzero(~(train | val)))
