"""Temperature scaling: one scalar T so that ``softmax(logits / T)`` is calibrated (pure array math).

Two criteria, both used by ``estimate-prior`` (before or while q is fitted) and ``calibrate``:

- ``nll``: minimise ``mean_i CE(z_i / T, y_i)``. With ``beta = 1 / T`` the objective is convex
  (a log-sum-exp of linear functions minus a linear term), so a safeguarded Newton iteration
  on ``beta`` finds the exact optimum (:func:`solve_temperature_nll`).
- ``confidence``: the paper's choice, ``mean_i max_k softmax(z_i / T)_k = accuracy``. The mean
  maximum probability falls monotonically as T grows and the accuracy does not depend on T,
  so the root is bracketed and found by regula falsi (Illinois) on ``log T``
  (:func:`solve_temperature_confidence`).

The solvers take the passes over the rows as callables, so the prior estimator can feed them
passes over a file streamed from disk; the array functions here are the in-memory case. Arrays
may be numpy arrays or torch tensors (any device): the array-API namespace of the input is used.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from glacli.base import chunking

T_MIN, T_MAX = 1e-4, 1e4


def log_softmax(xp: Any, s: Any) -> Any:
    """Row-wise ``log softmax`` in the namespace ``xp``."""
    top = xp.max(s, axis=1, keepdims=True)
    shifted = s - top
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def expected_logits(xp: Any, e: Any, z: Any, weights: Any = None, second: bool = False) -> tuple[Any, ...]:
    """Per row ``d_i = e_i . weights``, ``E_p[z_i]`` and, with ``second``, ``Var_p[z_i]`` and the
    column sums ``sum_i e_i z_i / d_i``, under ``p_i = e_i * weights / d_i``.

    ``e``: [n, C] unnormalised probabilities (e.g. ``exp(s - rowmax)``); ``weights``: [C] or None
    (ones). The one kernel for the temperature's gradient and curvature, here and in the prior solver.
    """
    ones = xp.ones(e.shape[1], dtype=e.dtype, device=device_of(e)) if weights is None else weights
    d = e @ ones
    if not second and weights is None:  # one fused pass, no [n, C] temporary
        return d, xp.linalg.vecdot(e, z) / d, None, None
    ez = e * z
    mean = (ez @ ones) / d
    if not second:
        return d, mean, None, None
    columns = (1.0 / d) @ ez
    ez *= z
    return d, mean, xp.clip((ez @ ones) / d - mean * mean, min=0.0), columns


def _labelled_blocks(logits: Any, labels: Any, dtype: str = "float64") -> Iterator[tuple[Any, Any]]:
    """``(z, y)`` row blocks as ``dtype`` and int64, of :func:`glacli.base.chunking.array_rows` rows each."""
    xp = array_namespace(logits)
    rows = chunking.array_rows(logits.shape[1])
    for start in range(0, logits.shape[0], rows):
        yield (xp.astype(logits[start:start + rows], getattr(xp, dtype)),
               xp.astype(labels[start:start + rows], xp.int64))


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` at ``labels``."""
    xp = array_namespace(logits)
    total = 0.0
    for z, y in _labelled_blocks(logits, labels):
        log_p = log_softmax(xp, z / temperature)
        total -= float(xp.sum(xp.take_along_axis(log_p, y[:, None], axis=1)))
    return total / logits.shape[0]


def solve_temperature_nll(grad_curv: Callable[[float], tuple[float, float]], tol: float = 1e-10,
                          max_iter: int = 100, beta: float = 1.0) -> float:
    """The T > 0 minimising a convex NLL in ``beta = 1/T``, given its derivative and curvature.

    ``grad_curv(beta)`` returns ``(mean(E_p[z] - z_y), mean Var_p(z))``. Newton steps on ``beta``
    fall back to bisection on the gradient's sign bracket when a step leaves the bracket.
    Returns ``T_MAX`` when the logits carry no usable signal (optimal beta at or below zero).
    """
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    if grad_curv(lo)[0] >= 0:
        return T_MAX
    if grad_curv(hi)[0] <= 0:
        return T_MIN
    beta = min(max(beta, lo), hi)
    for _ in range(max_iter):
        g, h = grad_curv(beta)
        if g == 0:
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else math.nan
        beta_next = step if lo <= step <= hi else 0.5 * (lo + hi)
        if abs(beta_next - beta) <= tol * beta:
            beta = beta_next
            break
        beta = beta_next
    return 1.0 / beta


def fit_temperature_nll(logits: Any, labels: Any, tol: float = 1e-10, max_iter: int = 100,
                        dtype: str = "float64") -> float:
    """The T > 0 minimising ``mean CE(logits / T, labels)`` (see :func:`solve_temperature_nll`);
    ``dtype`` of the rows' terms (sums are float64): float32 where T is only a start."""
    xp = array_namespace(logits)
    n = logits.shape[0]
    blocks = list(_labelled_blocks(logits, labels, dtype))
    mean_true = sum(float(xp.sum(xp.astype(xp.take_along_axis(z, y[:, None], axis=1), xp.float64)))
                    for z, y in blocks) / n

    def grad_curv(beta: float) -> tuple[float, float]:
        mean_z_sum = var_sum = 0.0
        for z, _ in blocks:
            s = beta * z
            _, mean_z, var_z, _ = expected_logits(xp, xp.exp(s - xp.max(s, axis=1, keepdims=True)), z, second=True)
            mean_z_sum += float(xp.sum(xp.astype(mean_z, xp.float64)))
            var_sum += float(xp.sum(xp.astype(var_z, xp.float64)))
        return mean_z_sum / n - mean_true, var_sum / n

    return solve_temperature_nll(grad_curv, tol, max_iter)


def mean_confidence(logits: Any, temperature: float) -> float:
    """Mean over rows of the largest softmax probability of ``logits / temperature``."""
    xp = array_namespace(logits)
    rows = chunking.array_rows(logits.shape[1])
    total = 0.0
    for start in range(0, logits.shape[0], rows):
        z = xp.astype(logits[start:start + rows], xp.float64) / temperature
        total += float(xp.sum(xp.exp(xp.max(log_softmax(xp, z), axis=1))))
    return total / logits.shape[0]


def solve_temperature_confidence(confidence: Callable[[float], float], accuracy: float, n_classes: int,
                                 tol: float = 1e-10) -> float:
    """The T at which ``confidence(T)`` (the mean maximum softmax probability) equals ``accuracy``.

    Raises ``ValueError`` when no such T exists: accuracy at or below chance (1/C, the lowest
    mean confidence any T gives) or a perfectly accurate model (needs T -> 0).
    """
    if accuracy <= 1.0 / n_classes + 1e-12:
        raise ValueError(f"top-1 accuracy {accuracy:.4f} is at or below chance; "
                         "no temperature makes confidence match it")
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    f_lo = confidence(math.exp(lo)) - accuracy
    if f_lo < 0:
        raise ValueError(f"top-1 accuracy {accuracy:.4f} is above any reachable mean confidence")
    f_hi = confidence(math.exp(hi)) - accuracy
    if f_hi > 0:
        return T_MAX
    side = 0
    for _ in range(200):
        mid = (lo * f_hi - hi * f_lo) / (f_hi - f_lo) if f_hi != f_lo else 0.5 * (lo + hi)
        f_mid = confidence(math.exp(mid)) - accuracy
        if f_mid > 0:
            lo, f_lo = mid, f_mid
            if side == 1:
                f_hi *= 0.5
            side = 1
        else:
            hi, f_hi = mid, f_mid
            if side == -1:
                f_lo *= 0.5
            side = -1
        if hi - lo <= tol or f_mid == 0:
            break
    return math.exp(0.5 * (lo + hi))


def fit_temperature_confidence(logits: Any, labels: Any, tol: float = 1e-10) -> float:
    """The T at which the mean maximum softmax probability equals top-1 accuracy."""
    xp = array_namespace(logits)
    correct = sum(float(xp.sum(xp.astype(xp.argmax(z, axis=1) == y, xp.float64)))
                  for z, y in _labelled_blocks(logits, labels))
    return solve_temperature_confidence(lambda t: mean_confidence(logits, t), correct / logits.shape[0],
                                        logits.shape[1], tol)
