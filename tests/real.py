"""Loading the real model outputs of the shared fixtures into gla files (tests only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from glacli.io.rowfile import write_logits



def clip_cifar10(fixtures: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CLIP ViT-B/32 zero-shot logits on CIFAR-10 test: [10000, 10], labels, class names."""
    path = fixtures / "clip-zeroshot" / "Clip_CIFAR10_CIFAR10_test.csv"
    header = path.open().readline().strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    n_classes = header.index("target-0")
    assert header[-1] == "instance_id" and (table[:, -1] == np.arange(len(table))).all()
    return table[:, :n_classes], table[:, n_classes].astype(np.int64), header[:n_classes]


def wideresnet_cifar10(fixtures: Path) -> tuple[np.ndarray, np.ndarray]:
    """A supervised WRN-16-4's log-probabilities on the same CIFAR-10 test rows, and its labels."""
    data = np.load(fixtures / "supervised" / "wideresnet-16-4-cifar-10.npz")
    return np.log(np.clip(data["predictions"].astype(np.float64), 1e-12, None)), data["ground_truth"].astype(np.int64)


def write_rows(path: Path, logits: np.ndarray, labels: np.ndarray, names: list[str], rows: np.ndarray,
               **attrs) -> Path:
    write_logits(path, logits[rows], labels[rows], [f"cifar10/test/{i}" for i in rows], names, attrs=attrs)
    return path


def balanced_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` random rows of each class, and the remaining rows (both sorted)."""
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == k), per_class, replace=False)
                             for k in np.unique(labels)])
    chosen.sort()
    return chosen, np.setdiff1d(np.arange(len(labels)), chosen)
