"""Estimating the label prior ``q`` of a zero-shot model (array math, no I/O; docs/method.md).

On an estimation set of class proportions ``f``, the zero-shot model with its prior ``q`` replaced
by ``f`` is ``softmax(beta z_i - b)`` with ``beta = 1 / T`` and ``b = log q - log f``, fitted by

    L(beta, b) = mean_i logsumexp(beta * z_i - b) + sum_k f_k b_k - beta * mean_i z_{i, y_i},

convex in ``(beta, b)``, invariant to ``b -> b + c``; ``dL/db = f - mean_i softmax(beta z_i - b)``
(the moment condition). Then ``log q = b + log f``, normalised. :mod:`.objective` is ``L`` over
kept or streamed rows, :mod:`.newton` Newton's method on it, :mod:`.rows` the passes. ``T`` fixed:
one fixed-point step ``b += log(m / f)`` (``m`` the mean predicted distribution), then Newton.
``nll``: Newton on the profile ``phi(beta) = min_b L(beta, b)`` (convex), then a joint float64
Newton step confirms the end point.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from glacli.base.types import PriorEstimate
from glacli.core.calibration import T_MAX, T_MIN, fit_temperature_nll, log_softmax, solve_temperature_confidence
from glacli.core.prior.newton import Newton, joint_inverse
from glacli.core.prior.objective import Objective, Point
from glacli.core.prior.rows import LogitSource, Rows

__all__ = ["DEFAULT_TOL", "LogitSource", "class_proportions", "estimate_prior"]

DEFAULT_TOL = 1e-8
START_ROWS = 2048
"""Subsample rows on which ``nll``'s first ``beta`` is fitted."""
PROFILE_GRADIENT = 1e-4
"""``nll``: the profile iteration hands over to the joint float64 Newton below this ``|phi'(beta)|``."""
UNDERFLOW = 1e-30
"""A mean class probability below this is recomputed in log space."""


def class_proportions(labels: Any, n_classes: int) -> np.ndarray:
    """Label frequencies, float64 [C]."""
    counts = np.bincount(np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64),
                         minlength=n_classes).astype(np.float64)
    return counts / counts.sum()


def estimate_prior(logits: Any, target: Any, temperature: float | str = 1.0, labels: Any = None,
                   tol: float = DEFAULT_TOL, max_iter: int = 100, hold_bytes: float = math.inf) -> PriorEstimate:
    """Fit ``q`` (and, with ``temperature="nll"``, ``T``) to zero-shot ``logits``.

    Args:
        logits: [N, C] zero-shot logits (numpy or torch, any float dtype, any device), or a
            :class:`LogitSource` streaming them; finite.
        target: [C] class proportions ``f`` of the estimation set (positive, summing to 1). The
            returned ``q`` is the pre-training prior whatever ``f`` is: ``log q = b + log f``.
        temperature: a positive number (fixed T), ``"confidence"`` (T such that mean max
            probability equals accuracy, then q) or ``"nll"`` (T and q jointly by maximum likelihood).
        labels: [N] labels; needed by ``"confidence"`` and ``"nll"``, and for the reported mean
            cross-entropy. ``"nll"`` requires that ``target`` are the proportions of these labels.
        tol: stop when ``max_k |f_k - mean_i p_ik|`` (and the beta gradient) is below this, in float64.
        hold_bytes: memory for a float32 copy of ``exp(beta z - b)``, which makes most passes two
            matrix-vector products; without it every pass recomputes from the rows (streamed or not).

    Returns:
        A :class:`PriorEstimate`; ``converged`` is False if ``max_iter`` ran out first.
    """
    source = logits if isinstance(logits, LogitSource) else LogitSource.from_array(logits)
    n, c = source.n_rows, source.n_classes
    target = np.asarray(target.cpu() if hasattr(target, "cpu") else target, dtype=np.float64)
    if target.shape != (c,) or not np.isfinite(target).all() or (target <= 0).any():
        raise ValueError("target proportions must be positive, one per class")
    target = target / target.sum()
    if labels is not None:
        labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64)
    elif temperature in ("nll", "confidence"):
        raise ValueError(f"temperature '{temperature}' needs labels")
    label_proportions = None if labels is None else class_proportions(labels, c)
    if temperature == "nll" and not np.allclose(label_proportions, target, rtol=0, atol=1e-12):
        raise ValueError("temperature 'nll' fits T to the labels, so the target must be their proportions")

    fit_beta, small = temperature == "nll", n * c < 2**20  # small: float64 throughout, passes cost nothing
    dtypes = ("float64",) if small else ("float32", "float64")
    keep = not small and 4.0 * n * c <= hold_bytes
    fixed_beta = None if temperature in ("nll", "confidence") else 1.0 / float(temperature)
    with Rows(source) as rows:
        objective = Objective(rows, target, fit_beta, keep)
        z_sub, sub_rows, start = objective.scan(labels, None if fit_beta else fixed_beta,
                                                label_proportions if fit_beta else None)
        if fit_beta:
            run = _profile(objective, z_sub, labels[sub_rows], dtypes, tol, max_iter)
        else:
            beta = fixed_beta or 1.0 / _confidence_temperature(rows, labels)
            zero = np.zeros(c)
            start = start or objective.evaluate(beta, zero, dtypes[0], hessian=False)
            b = _fixed_point_step(objective, beta, zero, start.moments, z_sub)
            run = Newton(objective, z_sub, False, tol, max_iter).solve(beta, b, dtypes)
        passes = rows.passes
    point, beta = run.point, run.point.beta
    moment_gaps = target - point.moments
    b = point.b if objective.shift is None else point.b + beta * objective.shift
    cross_entropy = None
    if label_proportions is not None:  # L holds sum_k f_k b_k where the cross-entropy has the label mean of b
        cross_entropy = objective.value(point) + float((label_proportions - target) @ point.b)
    log_q = b + np.log(target)
    log_q -= log_q.max() + math.log(np.exp(log_q - log_q.max()).sum())
    return PriorEstimate(log_q, 1.0 / beta, run.iterations, float(np.abs(moment_gaps).max()), run.converged,
                         cross_entropy, point.mean_z - objective.mean_true_logit if fit_beta else None,
                         moment_gaps, passes)


def _fixed_point_step(objective: Objective, beta: float, b: np.ndarray, moments: np.ndarray | None,
                      z_sub: np.ndarray) -> np.ndarray:
    """``b + log(m / f)`` from the mean predicted distribution ``m`` at ``(beta, b)``: every class's
    mean probability moves to its target at once, which lands close to the optimum. ``m`` comes from
    the subsample in log space where a class's probability underflows on every row (or ``moments``
    is None)."""
    low = np.ones(len(b), bool) if moments is None else moments < UNDERFLOW
    log_m = np.zeros(len(b)) if moments is None else np.log(np.maximum(moments, 1e-300))
    if low.any():
        log_p = log_softmax(np, z_sub * beta - b)
        top = log_p.max(0)
        log_m = np.where(low, top + np.log(np.exp(log_p - top).mean(0)), log_m)
    b = b + log_m - np.log(objective.target)
    return b - b.max()


def _confidence_temperature(rows: Rows, labels: np.ndarray) -> float:
    """The T at which mean max-probability equals top-1 accuracy, by passes over the rows."""
    xp = rows.xp
    y = rows.vector(labels, xp.int64)
    correct = rows.reduce(lambda s, z: (float(xp.sum(xp.astype(
        xp.argmax(z, axis=1) == y[s:s + z.shape[0]], xp.float64))),))[0]

    def confidence(temperature: float) -> float:
        return rows.reduce(lambda _s, z: (float(xp.sum(xp.exp(xp.max(
            log_softmax(xp, xp.astype(z, xp.float64) / temperature), axis=1)))),))[0] / rows.n

    return solve_temperature_confidence(confidence, correct / rows.n, rows.c)


def _profile(objective: Objective, z_sub: np.ndarray, y_sub: np.ndarray, dtypes: tuple[str, ...],
             tol: float, max_iter: int) -> Newton:
    """``nll``: Newton on ``phi(beta) = min_b L(beta, b)``, then the joint float64 Newton.

    The first ``beta`` is fitted on :data:`START_ROWS` subsample rows debiased by the fixed-point
    step at T = 1 (a T fitted with q uniform would absorb a strong prior). At each trial ``beta``
    the first pass keeps ``E`` (when it fits; it also gives ``phi' = mean_i E_p[z_i] - mean_i
    z_{i,y_i}`` there) and ``b`` is solved over it. At the first trial one more pass gives ``phi'``
    at the solved ``b`` and the Hessian's beta terms, so ``phi'' = H_beta_beta - H_beta_b H_bb^-1
    H_b_beta`` and ``db/dbeta = -H_bb^-1 H_b_beta`` (``H_bb^-1``: the Newton's inverse), which starts
    each next ``b``; later trials carry ``phi'`` from their keep along ``H_beta_b`` and take ``phi''``
    by secants.
    """
    b1 = _fixed_point_step(objective, 1.0, np.zeros(objective.rows.c), None, z_sub)
    every = max(1, len(z_sub) // START_ROWS)
    beta = 1.0 / fit_temperature_nll(z_sub[::every] - b1, y_sub[::every], tol=1e-4)
    b, inner = beta * b1, Newton(objective, z_sub, False, 1e-6, max_iter)
    lo, hi, iterations, run, h_beta_b = 1.0 / T_MAX, 1.0 / T_MIN, 0, None, None
    while True:
        inner.max_iter = max(1, max_iter - iterations)
        # the first pass at each beta keeps E; the inverse Hessian carries over (refreshed from the
        # subsample while the gap is large)
        run = inner.solve(beta, b, dtypes[:1], None if run is None else run.inverse)
        b, iterations = run.point.b, iterations + run.iterations + 1
        if h_beta_b is None or math.isnan(run.start.mean_z):  # phi', H_beta_b and phi'' from one more pass
            at = objective.evaluate(beta, b, dtypes[0], False, mean_z=True)
            gradient, h_beta_b = at.mean_z - objective.mean_true_logit, at.h_beta_b
            slope = run.inverse @ h_beta_b
            curvature = at.h_beta - float(h_beta_b @ slope)
        else:  # phi' where this beta's keep started, carried to the solved b along H_beta_b; phi'' by secant
            gradient = run.start.mean_z - objective.mean_true_logit + float(h_beta_b @ (b - run.start.b))
            secant = (gradient - previous[1]) / (beta - previous[0])
            curvature = secant if secant > 0 else curvature
        previous = (beta, gradient)
        if gradient > 0:
            hi = beta
        else:
            lo = beta
        new_beta = beta - gradient / curvature if curvature > 0 else math.nan
        if not lo < new_beta < hi:
            new_beta = math.sqrt(lo * hi)  # bisect in log beta: the bracket spans decades
        b, beta = b - slope * (new_beta - beta), new_beta
        inner.tol = max(tol / 4, min(1e-6, 1e-6 * abs(gradient)))
        if abs(gradient) < PROFILE_GRADIENT or hi - lo <= 1e-9 * hi or iterations >= max_iter:
            break
    joint = joint_inverse(run.inverse, h_beta_b, curvature) if curvature > 0 else None
    final = Newton(objective, z_sub, True, tol, max(1, max_iter - iterations)).solve(
        beta, b, ("float64",), inverse=joint, diag=run.diag)
    final.iterations += iterations
    return final
