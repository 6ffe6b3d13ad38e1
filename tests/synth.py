"""Synthetic gla files for tests: logits whose bias is a known prior, features with known labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from glacli import store


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


def write_logits_file(path: Path, logits: np.ndarray, labels: np.ndarray | None = None,
                      names: list[str] | None = None, ids: list[str] | None = None, **attrs) -> Path:
    n, c = logits.shape
    labels = np.full(n, -1, np.int64) if labels is None else labels
    store.write_logits(path, logits, labels, ids or [f"img/{i:06d}.jpg" for i in range(n)],
                       names or classnames(c), attrs=attrs)
    return path
