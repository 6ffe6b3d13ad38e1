"""Logits of a label space projected onto fewer classes: a subset, or groups merged by their maximum.

A distribution-shift set that covers part of ImageNet (ImageNet-R, -A: 200 classes; ObjectNet: 113
classes, each standing for one or more ImageNet classes) is scored after the 1000-class model has
made its prediction on the whole space, as WiSE-FT's ``project_logits`` does:

    projected[:, k] = max_{c in groups[k]} logits[:, c]

A group of one class is plain restriction (ImageNet-R/-A). The maximum is taken on logits, so it
commutes with dividing by a temperature and with adding a per-class bias first (GLA's ``- log q``
is applied on the 1000 classes, before the projection). Labels follow the classes: a label ``c``
becomes the ``k`` whose group holds ``c``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def group_layout(groups: Sequence[np.ndarray], n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(``order``: the groups' classes one after the other; ``starts``: where each group begins in
    ``order``; ``class_map``: [n_classes] the group of each class, -1 for classes in none).

    Raises ``ValueError`` for an empty group, a class out of range or a class in two groups.
    """
    if any(len(g) == 0 for g in groups):
        raise ValueError("a group holds no class")
    order = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]) if groups else np.empty(0, np.int64)
    if order.size and (order.min() < 0 or order.max() >= n_classes):
        raise ValueError(f"a class index is outside 0 .. {n_classes - 1}")
    if len(np.unique(order)) != len(order):
        raise ValueError("a class belongs to two groups")
    starts = np.cumsum([0] + [len(g) for g in groups[:-1]]).astype(np.int64)
    class_map = np.full(n_classes, -1, dtype=np.int64)
    for k, g in enumerate(groups):
        class_map[np.asarray(g, dtype=np.int64)] = k
    return order, starts, class_map


def project_logits(logits: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """[N, C] logits -> [N, K]: column k the maximum over group k's classes (:func:`group_layout`)."""
    picked = np.asarray(logits)[:, order]
    if len(starts) == len(order):  # every group one class: restriction
        return picked
    return np.maximum.reduceat(picked, starts, axis=1)


def project_labels(labels: np.ndarray, class_map: np.ndarray) -> np.ndarray:
    """Labels in the C classes -> labels in the K groups; -1 (unknown) stays -1, and so does a label
    whose class is in no group (the caller decides whether that is an error)."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.where(labels >= 0, class_map[np.clip(labels, 0, None)], -1)
