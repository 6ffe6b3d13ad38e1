"""Temperature scaling: one scalar T so that ``softmax(logits / T)`` is calibrated (pure torch).

Two criteria, both used by ``estimate-prior`` (before q is fitted) and ``calibrate``:

- ``nll``: minimise ``mean_i CE(z_i / T, y_i)``. With ``beta = 1 / T`` the objective is convex
  (a log-sum-exp of linear functions minus a linear term), so a safeguarded Newton iteration
  on ``beta`` finds the exact optimum.
- ``confidence``: the paper's choice, ``mean_i max_k softmax(z_i / T)_k = accuracy``. The mean
  maximum probability falls monotonically as T grows and the accuracy does not depend on T,
  so the root is bracketed and found by bisection on ``log T``.
"""
from __future__ import annotations

import math

import torch

T_MIN, T_MAX = 1e-4, 1e4


def _as64(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.to(torch.float64), labels.to(torch.long)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` at ``labels``."""
    z, y = _as64(logits, labels)
    return float(torch.nn.functional.cross_entropy(z / temperature, y))


def _row_blocks(z: torch.Tensor, elements: int = 2**22):
    rows = max(1, elements // max(1, z.shape[1]))
    return (z[start:start + rows] for start in range(0, len(z), rows))


def fit_temperature_nll(logits: torch.Tensor, labels: torch.Tensor, tol: float = 1e-10,
                        max_iter: int = 100) -> float:
    """The T > 0 minimising ``mean CE(logits / T, labels)``.

    Newton steps on ``beta = 1/T`` (gradient ``mean(E_p[z] - z_y)``, curvature ``mean Var_p(z)``),
    falling back to bisection on the gradient's sign bracket when a step leaves the bracket.
    Returns ``T_MAX`` when the logits carry no usable signal (optimal beta at or below zero).
    """
    z, y = _as64(logits, labels)
    z_true = z.gather(1, y[:, None]).squeeze(1)

    mean_true = float(z_true.mean())

    def grad_curv(beta: float) -> tuple[float, float]:
        mean_z_sum = var_sum = 0.0
        for block in _row_blocks(z):
            p = torch.softmax(beta * block, dim=1)
            mean_z = (p * block).sum(1)
            mean_z_sum += float(mean_z.sum())
            var_sum += float(((p * block * block).sum(1) - mean_z**2).clamp_min(0).sum())
        return mean_z_sum / len(z) - mean_true, var_sum / len(z)

    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    if grad_curv(lo)[0] >= 0:
        return T_MAX
    if grad_curv(hi)[0] <= 0:
        return T_MIN
    beta = 1.0
    for _ in range(max_iter):
        g, h = grad_curv(beta)
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else math.nan
        beta_next = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(beta_next - beta) <= tol * beta:
            beta = beta_next
            break
        beta = beta_next
    return 1.0 / beta


def mean_confidence(logits: torch.Tensor, temperature: float) -> float:
    """Mean over rows of the largest softmax probability of ``logits / temperature``."""
    total = 0.0
    for block in _row_blocks(logits):
        total += float(torch.softmax(block.to(torch.float64) / temperature, dim=1).amax(1).sum())
    return total / len(logits)


def fit_temperature_confidence(logits: torch.Tensor, labels: torch.Tensor, tol: float = 1e-10) -> float:
    """The T at which the mean maximum softmax probability equals top-1 accuracy.

    Raises ``ValueError`` when no such T exists: accuracy at or below chance (1/C, the lowest
    mean confidence any T gives) or a perfectly accurate model (needs T -> 0).
    """
    z, y = _as64(logits, labels)
    accuracy = float((z.argmax(1) == y).double().mean())
    if accuracy <= 1.0 / z.shape[1] + 1e-12:
        raise ValueError(f"top-1 accuracy {accuracy:.4f} is at or below chance; "
                         "no temperature makes confidence match it")
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    if mean_confidence(z, math.exp(lo)) < accuracy:
        raise ValueError(f"top-1 accuracy {accuracy:.4f} is above any reachable mean confidence")
    if mean_confidence(z, math.exp(hi)) > accuracy:
        return T_MAX
    # Regula falsi (Illinois variant) on log T: bracketing like bisection, far fewer passes.
    f_lo = mean_confidence(z, math.exp(lo)) - accuracy
    f_hi = mean_confidence(z, math.exp(hi)) - accuracy
    side = 0
    for _ in range(200):
        mid = (lo * f_hi - hi * f_lo) / (f_hi - f_lo) if f_hi != f_lo else 0.5 * (lo + hi)
        f_mid = mean_confidence(z, math.exp(mid)) - accuracy
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
