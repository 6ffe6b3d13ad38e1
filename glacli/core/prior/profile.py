"""``nll`` with the rows in memory: the profile likelihood in the temperature (pure array math).

``phi(beta) = min_b L(beta, b)`` is convex in ``beta = 1/T``. Each trial ``beta`` keeps
``exp(beta z)`` once and solves ``b`` by the cheap passes over it; ``phi'`` and ``phi''`` choose
the next ``beta`` and ``db/dbeta`` starts its ``b``; a joint float64 Newton step confirms the end
point. See :mod:`glacli.core.prior` for the whole solver.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from glacli.base import chunking
from glacli.core.calibration import T_MAX, T_MIN, log_softmax, solve_temperature_nll
from glacli.core.prior.kept import Kept, kept_pass
from glacli.core.prior.newton import (
    Newton,
    Problem,
    Run,
    first_step,
    joint_inverse,
    newton_system,
    regularised_inverse,
    subsample_hessian,
)
from glacli.core.prior.passes import Accuracy, Engine

START_ROWS = 512
"""Subsample rows on which ``nll``'s first ``beta`` is fitted (four times as many when the first
fixed-point step comes from all rows, as on the profile path)."""

PROFILE_GRADIENT = 1e-5
"""``nll``: the profile iteration hands over to the joint float64 Newton once ``|phi'(beta)|`` is
below this (after one more step in ``beta``; ``phi'`` is exact to about 2e-9 from the second
trial on, biased by about 1e-7 at the first, whose scores are float32)."""


def start_beta(z_sub: np.ndarray, y_sub: np.ndarray, b1: np.ndarray | None = None) -> float:
    """A first ``beta`` for ``nll``: the NLL-optimal ``beta`` of subsample rows debiased by one
    fixed-point step at T = 1 (a T fitted with q uniform would absorb a strong prior), scaled with
    beta. ``b1``: that step from all rows, else from at most :data:`START_ROWS` subsample rows.
    Classes absent from those rows are left out."""
    every = max(1, len(z_sub) // (START_ROWS if b1 is None else 4 * START_ROWS))
    z_sub, y_sub = z_sub[::every], y_sub[::every]
    present = np.bincount(y_sub, minlength=z_sub.shape[1]) > 0
    z_p, y_p = z_sub[:, present], (np.cumsum(present) - 1)[y_sub]
    if b1 is None:
        f_p = np.bincount(y_p) / len(y_p)
        log_p = log_softmax(np, z_p)
        top = log_p.max(0)
        b1_p = top + np.log(np.exp(log_p - top).mean(0)) - np.log(f_p)  # log-space mean: no underflow
    else:
        b1_p = b1[present]
    return 1.0 / _fit_temperature_float32(z_p - b1_p, y_p)


def _fit_temperature_float32(x: np.ndarray, y: np.ndarray) -> float:
    """:func:`glacli.core.calibration.fit_temperature_nll` in float32, cache-sized pieces on two
    threads, by Newton steps from T = 1 (bounded to a factor 4 each; the safeguarded solver takes
    over if they do not settle): a start needs no more."""
    x = x.astype(np.float32)
    x_y = float(np.take_along_axis(x, y[:, None], axis=1).mean(dtype=np.float64))
    pieces = [x[start:start + chunking.cache_rows(x.shape[1])]
              for start in range(0, len(x), chunking.cache_rows(x.shape[1]))]
    ones = np.ones(x.shape[1], np.float32)

    def piece_terms(part: np.ndarray, beta: float) -> tuple[float, float]:
        p = part * np.float32(beta)
        p -= p.max(1, keepdims=True)
        np.exp(p, out=p)
        p /= (p @ ones)[:, None]
        mean_x = np.einsum("ij,ij->i", p, part)
        p *= part
        variance = np.einsum("ij,ij->i", p, part) - mean_x * mean_x
        return float(mean_x.sum(dtype=np.float64)), float(np.clip(variance, 0, None).sum(dtype=np.float64))

    with ThreadPoolExecutor(2) as pool:
        def grad_curv(beta: float) -> tuple[float, float]:
            parts = list(pool.map(piece_terms, pieces, [beta] * len(pieces)))
            return sum(a for a, _ in parts) / len(x) - x_y, sum(v for _, v in parts) / len(x)

        beta = 1.0
        for _ in range(12):
            gradient, curvature = grad_curv(beta)
            if not curvature > 0:
                break
            new_beta = min(max(beta - gradient / curvature, beta / 4), beta * 4)
            if abs(new_beta - beta) <= 1e-4 * beta:
                return 1.0 / new_beta
            beta = new_beta
        return solve_temperature_nll(grad_curv, tol=1e-4)


def solve_nll(engine: Engine, problem: Problem, z_sub: np.ndarray, y_sub: np.ndarray,
              accuracy: Accuracy | None, b1: np.ndarray, kept: Kept) -> Run:
    """``nll`` with the rows held: Newton on the profile ``phi(beta) = min_b L(beta, b)`` in float32
    (each ``b`` solved by kept passes), then the joint float64 Newton from there (see the module)."""
    inner = Problem(problem.target, problem.mean_true_logit, False, 1e-6, problem.max_iter)
    newton = Newton(engine, inner, z_sub, hold=True, kept=kept)  # kept: its memory is reused
    beta = start_beta(z_sub, y_sub, b1)
    b = first_step(newton, beta, np.zeros(engine.c))
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    inverse, iterations, slope, hess_beta_b, curvature, previous = None, 0, None, None, math.nan, None
    while True:
        run = newton.run(beta, b, float64=False, inverse=inverse, float32_only=True)
        b, inverse, iterations = run.b, run.inverse, iterations + run.iterations
        if inverse is None:  # b was solved before any step: no Hessian was needed until now
            h_sub = subsample_hessian(z_sub, beta, b)
            inverse = regularised_inverse(newton_system(run.st, run.st.hess_diag, h_sub, False))
        if slope is None:  # at the first T: phi', -db/dbeta and phi'' from one pass; then phi'' by secants
            st, terms = kept_pass(engine, newton.kept, b, False, "curvature")
            gradient = st.mean_z - problem.mean_true_logit
            hess_beta_b = terms.hess_beta_b
            slope = inverse @ hess_beta_b
            curvature = terms.hess_beta - float(hess_beta_b @ slope)
            newton.beta_terms = "gradient"  # from now on each keep gives phi' where it starts
        else:  # phi' where the keep started, carried to the solved b along the Hessian's beta row
            gradient = (newton.kept_at.mean_z - problem.mean_true_logit
                        + float(hess_beta_b @ (b - newton.kept.b_ref)))
            secant = (gradient - previous[1]) / (beta - previous[0]) if beta != previous[0] else math.nan
            curvature = secant if secant > 0 else curvature
        if gradient > 0:
            hi = beta
        else:
            lo = beta
        new_beta = beta - gradient / curvature if curvature > 0 else math.nan
        if not lo < new_beta < hi:
            new_beta = math.sqrt(lo * hi)  # bisect in log beta: the bracket spans decades
        previous = (beta, gradient)
        b, beta = b - slope * (new_beta - beta), new_beta
        iterations += 1
        inner.tol = max(problem.tol / 4, min(1e-6, 1e-6 * abs(gradient)))
        pinned = hi - lo <= 1e-9 * hi
        if abs(gradient) < PROFILE_GRADIENT or pinned or iterations >= problem.max_iter:
            break
    joint = joint_inverse(inverse, hess_beta_b, curvature) if curvature > 0 else None
    final = Newton(engine, replace(problem, max_iter=max(1, problem.max_iter - iterations)), z_sub,
                   hold=False, accuracy=accuracy).run(beta, b, float64=True, inverse=joint)
    final.iterations += iterations
    return final
