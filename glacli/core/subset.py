"""Few-shot splits: class-balanced, deterministic selections of rows by label (pure, no I/O).

The one sampler of ``gla subset`` and ``gla extract --shots``. Within each class the rows are
ordered by a seeded key of their id, ``blake2b(f"{seed}\\0{id}")``, so the choice depends on
which samples a file holds, not on where they sit in it: ``extract --shots K --seed S`` keeps
exactly the rows that ``subset --shots K --seed S`` takes from the full extraction, and a
reordered file gives the same selection. Validation takes the first ``val_shots`` of each class's
order, training the next ``shots``, and the rest is left over. Because validation comes first,
the validation set does not change with ``shots``, and the training set for K shots is contained
in the one for K' > K (same seed and ``val_shots``), so results over shot counts compare like
with like.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


class NotEnoughRows(ValueError):
    """A class holds fewer rows than ``shots + val_shots``."""

    def __init__(self, class_index: int, available: int, shots: int, val_shots: int):
        self.class_index, self.available, self.shots, self.val_shots = class_index, available, shots, val_shots
        self.needed = shots + val_shots
        super().__init__(f"class {class_index} has {available} rows, {self.needed} needed")

    def for_user(self, classnames: list[str]) -> str:
        """The one-line error of ``gla subset`` and ``gla extract --shots``, in their options' words."""
        wanted = f"--shots {self.shots}" + (f" + --val-shots {self.val_shots}" if self.val_shots else "")
        return (f"class {self.class_index} ({classnames[self.class_index]!r}) has {self.available} rows, fewer "
                f"than {wanted}; use --allow-fewer to take what there is")


@dataclass
class Split:
    """Row indices (ascending, so the original order is kept) of the three disjoint parts."""

    train: np.ndarray
    val: np.ndarray
    rest: np.ndarray


def shot_keys(ids: Iterable[str], seed: int) -> np.ndarray:
    """The sort key of each row for ``seed``: ``blake2b(f"{seed}\\0{id}", digest_size=8)``, little-endian.

    A key depends only on the seed and the row's own id, so callers may compute the keys of a
    large file window by window and concatenate them.
    """
    prefix = f"{seed}\0".encode()
    return np.array([int.from_bytes(hashlib.blake2b(prefix + i.encode("utf-8", "surrogateescape"),
                                                    digest_size=8).digest(), "little") for i in ids],
                    dtype=np.uint64)


def few_shot_split(labels: np.ndarray, keys: np.ndarray, n_classes: int, shots: int, val_shots: int = 0,
                   allow_fewer: bool = False) -> Split:
    """Split rows into ``shots`` training and ``val_shots`` validation rows per class, and the rest.

    Parameters
    ----------
    labels : [N] int, class indices in ``0..n_classes-1`` (every row labelled).
    keys : [N] uint64, the rows' :func:`shot_keys` for the seed; each class is taken in ascending
        key order (ties, i.e. repeated ids, by row position).
    shots, val_shots : rows per class for training and validation (``shots >= 1``, ``val_shots >= 0``).
    allow_fewer : a class with fewer than ``shots + val_shots`` rows gives what it has (validation
        first) instead of raising :class:`NotEnoughRows`.

    Returns a :class:`Split` whose parts are disjoint, sorted, and together cover every row.
    """
    labels = np.asarray(labels, dtype=np.int64)
    keys = np.asarray(keys, dtype=np.uint64)
    if keys.shape != labels.shape:
        raise ValueError("keys and labels must hold one entry per row")
    if shots < 1 or val_shots < 0:
        raise ValueError("shots must be >= 1 and val_shots >= 0")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError("labels must be class indices in 0..n_classes-1")
    counts = np.bincount(labels, minlength=n_classes)
    needed = shots + val_shots
    if not allow_fewer and (counts < needed).any():
        k = int(np.argmax(counts < needed))
        raise NotEnoughRows(k, int(counts[k]), shots, val_shots)

    order = np.lexsort((keys, labels))  # grouped by class, by key within class (stable: ties by position)
    class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(labels.size, dtype=np.int64)
    rank[order] = np.arange(labels.size) - class_start[labels[order]]

    val = rank < val_shots
    train = (rank >= val_shots) & (rank < needed)
    return Split(train=np.flatnonzero(train), val=np.flatnonzero(val), rest=np.flatnonzero(~(train | val)))
