"""Synthetic gla files for tests: logits whose bias is a known prior, features with known labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from glacli.base import chunking
from glacli.base.types import Prior
from glacli.core.label_shift import probabilities
from glacli.io import rowfile
from glacli.io.paramfile import write_prior
from glacli.io.rowfile import read_rows

N_CLASSES = 5
DIM = 24
"""Default shape of :func:`class_features` problems."""


def classnames(c: int) -> list[str]:
    return [f"class {k}" for k in range(c)]


def biased_logits(n_per_class: int, c: int, seed: int = 0, scale: float = 3.0, temperature: float = 1.0):
    """Balanced labels drawn from softmax(g); returned logits are ``T * (g + log q_true)``.

    Subtracting ``log q_true`` after dividing by ``T`` recovers the true log-posterior ``g``,
    so the population optimum of the prior estimator is exactly ``q_true``.
    """
    rng = np.random.default_rng(seed)
    q_true = rng.dirichlet(np.full(c, 2.0))
    n = n_per_class * c
    g = rng.normal(size=(n, c)) * scale
    p = np.exp(g - g.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    z = temperature * (g + np.log(q_true))
    return z, labels.astype(np.int64), q_true


def probability_blocks(scores: np.ndarray, rows: int = 4096):
    """MLLS's probability blocks over in-memory scores (computed per block, never all at once)."""
    return lambda: (probabilities(scores[start:start + rows]) for start in range(0, len(scores), rows))


def write_logits_file(path: Path, logits: np.ndarray, labels: np.ndarray | None = None,
                      names: list[str] | None = None, ids: list[str] | None = None, **attrs) -> Path:
    n, c = logits.shape
    labels = np.full(n, -1, np.int64) if labels is None else labels
    rowfile.write_logits(path, logits, labels, ids or [f"img/{i:06d}.jpg" for i in range(n)],
                         names or classnames(c), attrs=attrs)
    return path


def class_features(n: int, separation: float, seed: int, n_classes: int = N_CLASSES, dim: int = DIM,
                   class_probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised rows: a fixed class mean per class (scaled by ``separation``) plus isotropic noise."""
    means = np.random.default_rng(1000).normal(size=(n_classes, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    labels = rng.choice(n_classes, size=n, p=class_probs)
    x = separation * means[labels] + rng.normal(size=(n, dim)) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels.astype(np.int64)


def write_features(path: Path, x: np.ndarray, y: np.ndarray, names: list[str] | None = None) -> Path:
    names = names or classnames(N_CLASSES)
    rowfile.write_features(path, x, y, [f"img/{i:05d}.jpg" for i in range(len(y))], names,
                           attrs={"model": "ViT-B-32", "pretrained": "synthetic"}, dtype=np.float32)
    return path



def read_logits(path: Path) -> tuple[np.ndarray, dict]:
    """A logits file's values in float64, and its attributes."""
    with read_rows(path, "logits") as f:
        return f.read().astype(np.float64), f.attrs


def write_combine_inputs(folder: Path, ft_temperature: float = 1.0) -> Path:
    """The inputs of ``combine`` with known values, in ``folder``: ``zs.h5`` and ``ft.h5`` (50 rows, 4
    classes; ``ft`` has ``ft_temperature`` applied), ``q.h5`` (q = [0.1, 0.2, 0.3, 0.4] at T_zs 1.7) and
    ``train.h5`` (features with 10, 20, 30 and 40 rows of the four classes)."""
    rng = np.random.default_rng(1)
    n, c = 50, 4
    labels = rng.integers(0, c, n)
    write_logits_file(folder / "zs.h5", rng.normal(size=(n, c)) * 5, labels, head_type="zeroshot")
    write_logits_file(folder / "ft.h5", rng.normal(size=(n, c)), labels, head_type="linear",
                      temperature=ft_temperature)
    write_prior(folder / "q.h5", Prior(prior=np.array([0.1, 0.2, 0.3, 0.4]), classnames=classnames(c),
                                       temperature=1.7, method="nll"))
    train_labels = np.repeat(np.arange(c), [10, 20, 30, 40])
    rowfile.write_features(folder / "train.h5", np.eye(c, 8)[train_labels], train_labels,
                           [f"t{i}" for i in range(len(train_labels))], classnames(c))
    return folder
