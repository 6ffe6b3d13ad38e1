"""The label distribution of an unlabelled test set, from a classifier calibrated for a uniform prior
(pure numpy, row blocks).

Label shift: the test set's ``p(x | y)`` is the training one's, only the class proportions
``pi_t`` differ. A classifier whose ``p_i = softmax(s_i)`` is calibrated for a uniform prior gives
``p_t(y | x_i) ∝ p_i,y pi_t(y)``, and the test inputs' likelihood is, up to a constant,
``prod_i sum_k p_ik pi_t(k)``.

- **MLLS** (Saerens, Latinne and Decaestecker 2002): maximise
  ``(1/N) sum_i log(p_i . w) + (a / (N C)) sum_k log w_k`` over the simplex: the likelihood above
  plus a symmetric Dirichlet prior with ``a`` pseudo-counts in all (a MAP estimate; ``a = 0`` is
  the MLE). The objective is concave; its EM map is ``w_k <- (w_k S_k + a/C) / (N + a)`` with
  ``S_k = sum_i p_ik / (p_i . w)``, whose fixed point is the optimum. We iterate it with SQUAREM
  (Varadhan and Roland 2008: two EM steps, a squared extrapolation, a stabilising EM step, and a
  fall back to plain EM whenever the likelihood would drop), and stop on the KKT residual, not
  on a step size: ``max_k |w_k S_k + a/C - (N + a) w_k| / (N + a)`` and, for ``a = 0``, the dual
  condition ``S_k <= N`` of classes at zero.
- **BBSE** (Lipton, Wang and Smola 2018): with hard predictions, ``P_test(yhat = i) =
  sum_j P_val(yhat = i | y = j) pi_t(j)``; solve the validation confusion system for ``pi_t``
  and project it onto the simplex. The validation set's own class proportions are divided out
  by using the column-normalised confusion matrix ``P_val(yhat | y)``.

Probabilities are computed per block of rows; a pass over a :class:`ProbabilityBlocks` is two
matrix-vector products per block.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

DEFAULT_CONCENTRATION = 1.0
"""Pseudo-counts in all of the symmetric Dirichlet prior of MLLS: at most one, as the data decide."""
LOG_FLOOR = math.log(1e-12)
"""``log pi_t`` stored for a class the MLE (concentration 0) puts at zero: finite for every reader."""
DEFAULT_TOL = 1e-8
TARGET_METHODS = ("mlls", "bbse")
"""The ``method`` of a prior file that holds a test label distribution ``pi_t``, not a pre-training ``q``."""

ProbabilityBlocks = Callable[[], Iterable[np.ndarray]]
"""Yields the rows' ``softmax(s_i)`` (float64 [rows, C]) in the same order on every call."""


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.max(1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(1, keepdims=True)


@dataclass
class TargetEstimate:
    """An estimated test label distribution and how the solver got there."""

    prior: np.ndarray
    """``pi_t``, float64 [C], on the simplex (zeros possible with concentration 0)."""
    log_prior: np.ndarray
    """``log pi_t``, finite: zeros are stored at :data:`LOG_FLOOR`, then renormalised."""
    method: str
    iterations: int
    kkt_gap: float
    converged: bool
    log_likelihood: float | None = None
    """MLLS: the maximised objective (mean log-likelihood plus the Dirichlet term)."""


def _em_pass(blocks: ProbabilityBlocks, w: np.ndarray) -> tuple[np.ndarray, float, int]:
    """``S_k = sum_i p_ik / (p_i . w)``, ``sum_i log(p_i . w)`` and N, in one pass."""
    s = np.zeros_like(w)
    log_likelihood, n = 0.0, 0
    for p in blocks():
        d = p @ w
        s += (1.0 / d) @ p
        log_likelihood += float(np.log(d).sum())
        n += len(p)
    return s, log_likelihood, n


def _log_finite(w: np.ndarray) -> np.ndarray:
    """``log w`` with zeros at :data:`LOG_FLOOR`, renormalised so that ``exp`` sums to 1."""
    with np.errstate(divide="ignore"):
        log_w = np.maximum(np.log(w), LOG_FLOOR)
    top = log_w.max()
    return log_w - (top + math.log(np.exp(log_w - top).sum()))


def mlls(blocks: ProbabilityBlocks, n_classes: int, concentration: float = DEFAULT_CONCENTRATION,
         tol: float = DEFAULT_TOL, max_iter: int = 10000) -> TargetEstimate:
    """Maximum-likelihood (or, with ``concentration > 0``, MAP) label shift estimate; see the module doc."""
    if concentration < 0:
        raise ValueError("the Dirichlet concentration must not be negative")
    c, a = n_classes, float(concentration)

    def em(w: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The EM image of ``w``, the objective at ``w`` and the KKT residual at ``w``."""
        s, log_likelihood, n = _em_pass(blocks, w)
        image = (w * s + a / c) / (n + a)
        residual = float(np.abs(w * s + a / c - (n + a) * w).max()) / (n + a)
        if a == 0:  # a class at zero is optimal only if raising it would not raise the likelihood
            residual = max(residual, float(np.maximum(s / n - 1.0, 0.0)[w <= 1e-12].max(initial=0.0)))
        with np.errstate(divide="ignore"):
            prior_term = a / c * float(np.log(w).sum()) if a > 0 else 0.0
        return image, (log_likelihood + prior_term) / n, residual

    w = np.full(c, 1.0 / c)
    iterations, converged = 0, False
    w1, objective, gap = em(w)
    while iterations < max_iter:
        if gap < tol:
            converged = True
            break
        iterations += 1
        w2, _, _ = em(w1)
        r, v = w1 - w, (w2 - w1) - (w1 - w)
        v_norm = float(np.linalg.norm(v))
        alpha = -float(np.linalg.norm(r)) / v_norm if v_norm > 0 else -1.0
        alpha = min(alpha, -1.0)
        candidate = w - 2 * alpha * r + alpha * alpha * v
        if (candidate <= 0).any() or not np.isfinite(candidate).all():
            candidate = w2
        candidate /= candidate.sum()
        next_w1, next_objective, next_gap = em(candidate)
        if next_objective < objective - 1e-15 * max(1.0, abs(objective)):  # safeguard: plain EM never descends
            candidate = w2
            next_w1, next_objective, next_gap = em(candidate)
        w, w1, objective, gap = candidate, next_w1, next_objective, next_gap
    w = np.where(w <= 1e-300, 0.0, w) if a == 0 else w
    return TargetEstimate(w / w.sum(), _log_finite(w / w.sum()), "mlls", iterations, gap, converged, objective)


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``P(yhat = i | y = j)`` [C, C], columns normalised (the validation set's proportions divided out)."""
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (predictions, labels), 1.0)
    column = counts.sum(0)
    if (column == 0).any():
        k = int(np.argmax(column == 0))
        raise ValueError(f"class {k} has no validation rows: its column of the confusion matrix is undefined")
    return counts / column


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto ``{w >= 0, sum w = 1}`` (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = int(np.nonzero(u - cumulative / k > 0)[0][-1])
    return np.maximum(v - cumulative[rho] / (rho + 1), 0.0)


def bbse(test_predictions: np.ndarray, val_predictions: np.ndarray, val_labels: np.ndarray,
         n_classes: int, max_condition: float = 1e8) -> TargetEstimate:
    """Black-box shift estimation from hard predictions; see the module doc."""
    confusion = confusion_matrix(val_predictions, val_labels, n_classes)
    condition = float(np.linalg.cond(confusion))
    if not condition < max_condition:
        raise ValueError(f"the validation confusion matrix is singular (condition number {condition:.3g}): "
                         "some classes are never told apart; BBSE cannot invert it (use --method mlls)")
    predicted = np.bincount(test_predictions, minlength=n_classes) / len(test_predictions)
    solution = np.linalg.solve(confusion, predicted)
    w = project_to_simplex(solution)
    residual = float(np.abs(confusion @ w - predicted).max())
    return TargetEstimate(w, _log_finite(w), "bbse", 0, residual, True)
