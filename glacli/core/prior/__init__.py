"""Estimating the label prior ``q`` of a zero-shot model (array math, no I/O; docs/method.md).

On an estimation set of class proportions ``f``, the zero-shot model with its prior ``q`` replaced
by ``f`` is ``softmax(beta z_i - b)`` with ``beta = 1 / T`` and ``b = log q - log f``, fitted by

    L(beta, b) = mean_i logsumexp(beta * z_i - b) + sum_k f_k b_k - beta * mean_i z_{i, y_i},

convex in ``(beta, b)``, invariant to ``b -> b + c``; ``dL/db = f - mean_i softmax(beta z_i - b)``
(the moment condition); ``log q = b + log f``. :mod:`.objective` is ``L``, :mod:`.newton` Newton's
method on it, :mod:`.rows` the passes. T fixed: a fixed-point step ``b += log(m / f)``, then Newton.
``nll``: Newton on ``phi(beta) = min_b L(beta, b)`` (convex), then a joint float64 Newton step.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from glacli.base.chunking import LogitSource
from glacli.base.types import PriorEstimate
from glacli.core.calibration import T_MAX, T_MIN, fit_temperature_nll, log_softmax, solve_temperature_confidence
from glacli.core.prior.newton import Newton, joint_inverse
from glacli.core.prior.objective import Objective
from glacli.core.prior.rows import Rows

__all__ = ["DEFAULT_TOL", "LogitSource", "class_proportions", "estimate_prior"]

DEFAULT_TOL = 1e-8
START_ROWS = 2048  # subsample rows on which nll's first beta is fitted
PROFILE_GRADIENT = 1e-4  # nll hands over from the profile to the joint float64 Newton below this |phi'(beta)|
FLOAT64_KEEPS = 1e-2  # below this |phi'(beta)| the next trial's keeping pass sums in float64
UNDERFLOW = 1e-30  # a mean class probability below this is recomputed in log space


def class_proportions(labels: Any, n_classes: int) -> np.ndarray:
    """Label frequencies, float64 [C]."""
    counts = np.bincount(np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64),
                         minlength=n_classes).astype(np.float64)
    return counts / counts.sum()


def estimate_prior(logits: Any, target: Any, temperature: float | str = 1.0, labels: Any = None,
                   tol: float = DEFAULT_TOL, max_iter: int = 100, hold_bytes: float = math.inf) -> PriorEstimate:
    """Fit ``q`` (and, with ``temperature="nll"``, ``T``) to zero-shot ``logits``.

    Args:
        logits: [N, C] finite zero-shot logits (numpy or torch, any float dtype and device), or a
            :class:`LogitSource` streaming them.
        target: [C] class proportions ``f`` of the estimation set (positive, summing to 1); ``q`` is
            the pre-training prior whatever ``f`` is: ``log q = b + log f``.
        temperature: a positive number (fixed T), ``"confidence"`` (T such that mean max probability
            equals accuracy, then q) or ``"nll"`` (T and q jointly by maximum likelihood).
        labels: [N] labels; needed by ``"confidence"`` and ``"nll"`` (whose ``target`` must be their
            proportions), and for the reported mean cross-entropy.
        tol: stop when ``max_k |f_k - mean_i p_ik|`` (and the beta gradient) is below this, in float64.
        hold_bytes: memory for a float32 ``exp(beta z - b)``, which makes most passes two matrix-vector products.

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
    fixed_beta = None if temperature in ("nll", "confidence") else 1.0 / float(temperature)
    with Rows(source) as rows:
        objective = Objective(rows, target, fit_beta, keep=not small and 4.0 * n * c <= hold_bytes)
        z_sub, sub_rows, start = objective.scan(labels, fixed_beta, label_proportions if fit_beta else None)
        if fit_beta:
            run = _profile(objective, z_sub, labels[sub_rows], dtypes, tol, max_iter)
        else:
            beta, zero = fixed_beta or 1.0 / _confidence_temperature(rows, labels), np.zeros(c)
            start = start or objective.evaluate(beta, zero, dtypes[0], hessian=False)
            b = _fixed_point_step(objective, beta, zero, start.moments, z_sub)
            run = Newton(objective, z_sub, False, tol, max_iter).solve(beta, b, dtypes)
    point, beta = run.point, run.point.beta
    moment_gaps = target - point.moments
    # L holds sum_k f_k b_k where the cross-entropy has the label mean of b
    cross_entropy = None if label_proportions is None else (
        objective.value(point) + float((label_proportions - target) @ point.b))
    log_q = point.b + (0.0 if objective.shift is None else beta * objective.shift) + np.log(target)
    log_q -= log_q.max() + math.log(np.exp(log_q - log_q.max()).sum())
    return PriorEstimate(log_q, 1.0 / beta, run.iterations, float(np.abs(moment_gaps).max()), run.converged,
                         cross_entropy, point.mean_z - objective.mean_true_logit if fit_beta else None,
                         moment_gaps, rows.passes)


def _fixed_point_step(objective: Objective, beta: float, b: np.ndarray, moments: np.ndarray | None,
                      z_sub: np.ndarray) -> np.ndarray:
    """``b + log(m / f)``, ``m`` the mean predicted distribution at ``(beta, b)``: every class moves to
    its target at once. ``m`` comes from the subsample (log space) where ``moments`` is None or underflows."""
    low = np.ones(len(b), bool) if moments is None else moments < UNDERFLOW
    log_m = np.zeros(len(b)) if moments is None else np.log(np.maximum(moments, 1e-300))
    if low.any():  # float32: it only starts the solve
        log_p = log_softmax(np, z_sub * np.float32(beta) - b.astype(np.float32))
        top = log_p.max(0)
        log_m = np.where(low, top + np.log(np.exp(log_p - top).mean(0, dtype=np.float64)), log_m)
    b = b + log_m - np.log(objective.target)
    return b - b.max()


def _confidence_temperature(rows: Rows, labels: np.ndarray) -> float:
    """The T at which mean max-probability equals top-1 accuracy, by passes over the rows."""
    xp, y = rows.xp, rows.vector(labels, rows.xp.int64)
    correct = rows.reduce(lambda s, z: (float(xp.sum(xp.astype(xp.argmax(z, axis=1) == y[s:s + z.shape[0]],
                                                               xp.float64))),))[0]
    return solve_temperature_confidence(lambda t: rows.reduce(lambda _s, z: (float(xp.sum(xp.exp(xp.max(
        log_softmax(xp, xp.astype(z, xp.float64) / t), axis=1)))),))[0] / rows.n, correct / rows.n, rows.c)


def _profile(objective: Objective, z_sub: np.ndarray, y_sub: np.ndarray, dtypes: tuple[str, ...],
             tol: float, max_iter: int) -> Newton:
    """``nll``: Newton on ``phi(beta) = min_b L(beta, b)``, then the joint float64 Newton.

    The first ``beta`` is fitted on :data:`START_ROWS` subsample rows debiased at T = 1 (a T fitted with
    q uniform would absorb a strong prior), its ``b`` started by the fixed-point step over all rows. At
    each trial ``beta``, ``b`` is solved over kept ``E``; at the first, one more pass gives ``phi'``,
    ``phi'' = H_beta_beta - H_beta_b H_bb^-1 H_b_beta`` and ``db/dbeta = -H_bb^-1 H_b_beta`` (which starts
    each next ``b``); later trials carry ``phi'`` from their keep's start along ``H_beta_b`` (summed in
    float64 near the end, so that the last step lands within the tolerance) and take ``phi''`` by secants.
    """
    b1 = _fixed_point_step(objective, 1.0, np.zeros(objective.rows.c), None, z_sub)
    every = max(1, len(z_sub) // START_ROWS)
    beta = 1.0 / fit_temperature_nll(z_sub[::every] - b1.astype(np.float32), y_sub[::every], tol=1e-4,
                                     dtype="float32")
    at = objective.evaluate(beta, beta * b1, dtypes[0], hessian=False)  # keeps E at the first beta
    b = _fixed_point_step(objective, beta, at.b, at.moments, z_sub)
    inner = Newton(objective, z_sub, False, 1e-6, max_iter)
    lo, hi, iterations, run, h_beta_b = 1.0 / T_MAX, 1.0 / T_MIN, 0, None, None
    while True:
        inner.max_iter = max(1, max_iter - iterations)
        run = inner.solve(beta, b, dtypes[:1], *((None, None) if run is None else (run.inverse, run.diag)))
        b, iterations = run.point.b, iterations + run.iterations + 1
        if h_beta_b is None or math.isnan(run.start.mean_z):  # phi', H_beta_b and phi'' from one more pass
            at = objective.evaluate(beta, b, dtypes[0], False, curvature=True)
            gradient, h_beta_b = at.mean_z - objective.mean_true_logit, at.h_beta_b
            slope = run.inverse @ h_beta_b
            curvature = at.h_beta - float(h_beta_b @ slope)
        else:  # phi' where this beta's keep started, carried to the solved b along H_beta_b; phi'' by secant
            gradient = run.start.mean_z - objective.mean_true_logit + float(h_beta_b @ (b - run.start.b))
            secant = (gradient - previous[1]) / (beta - previous[0])
            curvature = secant if secant > 0 else curvature
        previous = (beta, gradient)
        lo, hi = (lo, beta) if gradient > 0 else (beta, hi)
        new_beta = beta - gradient / curvature if curvature > 0 else math.nan
        if not lo < new_beta < hi:
            new_beta = math.sqrt(lo * hi)  # bisect in log beta: the bracket spans decades
        b, beta = b - slope * (new_beta - beta), new_beta
        inner.tol = max(tol / 4, min(1e-6, 1e-6 * abs(gradient)))
        if abs(gradient) < FLOAT64_KEEPS:
            objective.keep_sums = dtypes[-1]
        if abs(gradient) < PROFILE_GRADIENT or hi - lo <= 1e-9 * hi or iterations >= max_iter:
            break
    joint = joint_inverse(run.inverse, h_beta_b, curvature) if curvature > 0 else None
    final = Newton(objective, z_sub, True, tol, max(1, max_iter - iterations)).solve(
        beta, b, ("float64",), inverse=joint, diag=run.diag)
    final.iterations += iterations
    return final
