"""Estimating the label prior ``q`` of a zero-shot model (pure array math, no I/O).

The estimator of GLA. On an estimation set whose class proportions are ``f``, the zero-shot model
with its pre-training prior ``q`` replaced by ``f`` is ``softmax(beta * z_i - log q + log f)``, with
``beta = 1 / T``. Its likelihood depends on ``q`` only through the bias ``b = log q - log f``:

    L(beta, b) = mean_i logsumexp(beta * z_i - b) + sum_k f_k b_k - beta * mean_i z_{i, y_i}

(the mean cross-entropy when ``f`` are the label proportions). ``L`` is convex in ``(beta, b)``,
invariant to ``b -> b + c``, and its gradient in ``b`` is ``f - mean_i softmax(beta * z_i - b)``:
at the optimum the mean predicted distribution equals the class proportions (the *moment*
condition). The maximum-likelihood prior is then ``log q = b + log f``, normalised; on a
balanced set ``log f`` is a constant and ``q = softmax(b)``. Only ``f`` enters, so a set of
known proportions needs no labels at all when ``beta`` is fixed.

The solver is Newton's method with a line search, started by one fixed-point step
``b += log(m / f)`` (``m`` the mean predicted distribution; computed in log space when a class's
probability underflows on every row). The dense ``b``-block of the Hessian comes from a fixed
subsample of rows with its diagonal raised to the exact one, and is then improved by BFGS updates
from the gradients the passes give anyway.

Passes are what cost, so they are made cheap and few:

- With ``beta`` fixed, the first pass over the rows (which also checks them) computes
  ``E = exp(beta z - rowmax)`` in float32 and keeps it (when it fits ``hold_bytes``); every later
  pass is two matrix-vector products over the whole array, ``d = E w`` and ``E^T (1/d)`` with
  ``w = exp(-b)``, since ``softmax(beta z_i - b)_k = E_ik w_k / d_i``. Where ``E`` does not fit,
  each pass streams the rows again (memory stays one block; the next block is read while one is
  worked on).
- With ``beta`` free (``nll``, rows and ``E`` both in memory), ``beta`` is found on the *profile*
  ``phi(beta) = min_b L(beta, b)``, convex in ``beta``. The first pass also gives the mean
  softmax at T = 1, whose fixed-point step ``b1`` debiases a 2,048-row subsample on which a first
  ``beta`` is fitted (within ~0.1% on CLIP-like logits). At each trial ``beta`` one exp pass keeps
  ``E`` and ``b`` is solved by kept passes. At the first trial one more pass gives
  ``phi'(beta) = mean_i E_p[z_i] - mean_i z_{i,y_i}``, the Hessian's beta row ``H_beta_b`` and
  ``phi'' = H_beta_beta - H_beta_b H_bb^-1 H_b_beta``; the next ``b`` starts at
  ``b + (db/dbeta) dbeta`` with ``db/dbeta = -H_bb^-1 H_b_beta``, and later trials take ``phi'``
  from their keep pass, carried to the solved ``b`` along ``H_beta_b``, and ``phi''`` by secants.
  Later keeps form the scores in float64 (the exp in float32) and sum ``phi'`` in float64, so the
  float32 stage ends within the tolerance and one joint float64 Newton pass usually confirms it.
  (``nll`` with only the rows in memory, or streamed, runs the joint Newton on full passes.)
- Float32 until the gap is small; the last pass is always float64, and convergence is declared
  on the float64 gap. On a CPU the pieces of a pass run on all cores.

The arrays may be numpy arrays (CPU, no torch needed) or torch tensors (any device): the array-API
namespace of the input is used, so one solver serves both.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as device_of

from glacli import chunking
from glacli.calibration import (
    T_MAX,
    T_MIN,
    log_softmax,
    solve_temperature_confidence,
    solve_temperature_nll,
)
from glacli.prior_passes import (
    Accuracy,
    Engine,
    Kept,
    LogitSource,
    Pass,
    full_pass,
    keep,
    kept_pass,
    log_moments,
    prepare,
)
from glacli.types import PriorEstimate

DEFAULT_TOL = 1e-8
REUSE_HESSIAN_BELOW_GAP = 1e-4
FLOAT32_FLOOR = 1e-6
"""Below this gap float32 rounding may stall the iteration (the beta gradient cancels): an
iteration that does not halve the gap there hands over to float64."""
REFERENCE_DRIFT = 30.0
"""Kept ``E`` is recomputed once ``b`` moved this far from where it was computed (float32 range)."""
MAX_RIDGE_RETRIES = 30
"""Each retry multiplies the ridge by 100: from 1e-12 to far beyond any finite Hessian's scale."""
UNDERFLOW = 1e-30
"""A mean class probability below this is recomputed in log space."""
START_ROWS = 512
"""Subsample rows on which ``nll``'s first ``beta`` is fitted (four times as many when the first
fixed-point step comes from all rows, as on the profile path)."""
PROFILE_GRADIENT = 1e-5
"""``nll``: the float32 profile iteration hands over to the joint float64 Newton once
``|phi'(beta)|`` is below this (float32 rounding of ``phi'`` is about 1e-7)."""


def _subsample_hessian(z_sub: np.ndarray, beta: float, b: np.ndarray) -> np.ndarray:
    """``mean_i diag(p_i) - p_i p_i^T`` over the subsample, float64 [C, C] (float32 inside: it only shapes the step)."""
    p = (z_sub * beta - b).astype(np.float32)
    p -= p.max(1, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(1, keepdims=True)
    return np.diag(p.mean(0, dtype=np.float64)) - (p.T @ p).astype(np.float64) / len(p)


def _newton_system(st: Pass, diag: np.ndarray, h_sub: np.ndarray, fit_beta: bool) -> np.ndarray:
    """The Hessian used for the step: subsample b-block with the exact diagonal, plus the beta row.

    The b-block is made PSD-safe by only raising its diagonal (``max(exact - subsample, 0)``), and
    the gauge direction ``b -> b + c`` (zero curvature, zero gradient) is fixed by adding ``1 1^T / C``.
    """
    c = h_sub.shape[0]
    h_bb = h_sub + np.diag(np.maximum(diag - np.diag(h_sub), 0)) + 1.0 / c
    if not fit_beta:
        return h_bb
    h = np.empty((c + 1, c + 1))
    h[0, 0] = st.hess_beta
    h[0, 1:] = h[1:, 0] = st.hess_beta_b
    h[1:, 1:] = h_bb
    return h


def _bfgs_update(inverse: np.ndarray, step: np.ndarray, change: np.ndarray) -> np.ndarray:
    """The BFGS update of an inverse Hessian from one step and the gradient change it caused
    (skipped when the curvature along the step is not positive, e.g. rounding at the optimum)."""
    curvature = float(change @ step)
    if not curvature > 1e-300:
        return inverse
    rho = 1.0 / curvature
    hy = inverse @ change
    return (inverse - rho * (np.outer(step, hy) + np.outer(hy, step))
            + (rho * rho * float(change @ hy) + rho) * np.outer(step, step))


def _inverse(h: np.ndarray) -> np.ndarray:
    """``(h + ridge I)^-1`` with the smallest ridge that makes ``h`` positive definite (a Cholesky
    factorisation decides); kept across iterations, each Newton direction is then one product."""
    if not np.isfinite(h).all():
        raise ValueError("the Newton system is not positive definite at any ridge (non-finite curvature)")
    ridge = 1e-12 * max(float(np.abs(np.diag(h)).max()), 1e-300)
    eye = np.eye(len(h))
    for _ in range(MAX_RIDGE_RETRIES):
        try:
            np.linalg.cholesky(h + ridge * eye)
            return np.linalg.inv(h + ridge * eye)
        except np.linalg.LinAlgError:
            ridge *= 100
    raise ValueError("the Newton system is not positive definite at any ridge (non-finite curvature)")


def _joint_inverse(inverse_bb: np.ndarray, hess_beta_b: np.ndarray, curvature: float) -> np.ndarray:
    """The inverse of ``[[h, u^T], [u, H]]`` from ``H^-1``, ``u`` and the Schur complement
    ``h - u^T H^-1 u`` (the profile's curvature): no new factorisation for the joint Newton."""
    v = inverse_bb @ hess_beta_b
    out = np.empty((len(v) + 1, len(v) + 1))
    out[0, 0] = 1.0 / curvature
    out[0, 1:] = out[1:, 0] = -v / curvature
    out[1:, 1:] = inverse_bb + np.outer(v, v) / curvature
    return out


@dataclass
class _Problem:
    """What the Newton iteration needs besides the rows: ``f``, the label term, and the stopping rule."""

    target: np.ndarray
    mean_true_logit: float
    fit_beta: bool
    tol: float
    max_iter: int


@dataclass
class _Run:
    """Where a Newton run ended: the point, its pass, the iterations, convergence, the inverse Hessian."""

    beta: float
    b: np.ndarray
    st: Pass
    iterations: int
    converged: bool
    inverse: np.ndarray | None


class _Newton:
    """Newton's method on ``L``: full passes (beta free, or rows too large to keep) or kept-``E`` passes."""

    def __init__(self, engine: Engine, problem: _Problem, z_sub: np.ndarray, hold: bool,
                 accuracy: Accuracy | None = None, kept: Kept | None = None):
        self.engine, self.problem, self.z_sub, self.hold, self.accuracy = engine, problem, z_sub, hold, accuracy
        self.kept = kept
        self.beta_terms: str | None = None
        """``"gradient"``: each pass that keeps ``E`` also gives ``mean_i E_p[z_i]`` where it
        starts (``nll``'s profile at fixed beta), as :attr:`kept_at`."""
        self.kept_at: Pass | None = None

    def objective(self, beta: float, b: np.ndarray, st: Pass) -> float:
        return st.lse + float(self.problem.target @ b) - beta * self.problem.mean_true_logit

    def gradient(self, st: Pass) -> np.ndarray:
        g_b = self.problem.target - st.moments
        return np.concatenate([[st.mean_z - self.problem.mean_true_logit], g_b]) if self.problem.fit_beta else g_b

    def evaluate(self, beta: float, b: np.ndarray, float64: bool, hessian: bool) -> Pass:
        xp = self.engine.xp
        if float64 or not self.hold:
            return full_pass(self.engine, beta, b, self.problem.fit_beta, xp.float64 if float64 else xp.float32,
                              hessian, self.accuracy if float64 else None)
        if self.kept is None or self.kept.beta != beta or np.abs(b - self.kept.b_ref).max() > REFERENCE_DRIFT:
            self.kept, self.kept_at, _ = keep(self.engine, beta, b, reuse=self.kept, hessian=hessian,
                                              beta_terms=self.beta_terms)
            return self.kept_at
        return kept_pass(self.engine, self.kept, b, hessian)[0]

    def run(self, beta: float, b: np.ndarray, float64: bool, inverse: np.ndarray | None = None,
            float32_only: bool = False) -> _Run:
        """Iterate from ``(beta, b)``; returns the end point with its float64 pass (``float32_only``:
        its float32 pass, stopping at the tolerance in float32, for ``nll``'s inner solves).

        The inverse Hessian comes from the subsample (refreshed while the gap is above
        :data:`REUSE_HESSIAN_BELOW_GAP`, unless given) and is then improved by BFGS updates from
        the gradients the passes give anyway, which turns the subsample's linear convergence
        superlinear. Float32 passes go on while each iteration at least halves the gap; then
        float64 finishes.
        """
        problem = self.problem
        st = self.evaluate(beta, b, float64, hessian=inverse is None)
        diag, iterations, given = st.hess_diag, 0, inverse is not None
        g = self.gradient(st)
        while True:
            gap = float(np.abs(g).max())
            if (gap < problem.tol and (float64 or float32_only)) or iterations >= problem.max_iter:
                break
            if st.hess_diag is not None:
                diag = st.hess_diag
            if inverse is None or (gap > REUSE_HESSIAN_BELOW_GAP and not given):
                inverse = _inverse(_newton_system(st, diag, _subsample_hessian(self.z_sub, beta, b), problem.fit_beta))
            direction = -(inverse @ g)
            slope, g_norm = float(g @ direction), float(np.linalg.norm(g))
            current = self.objective(beta, b, st)
            t, accepted = 1.0, False
            near_float32_floor = not float64 and gap < FLOAT32_FLOOR
            for _ in range(3 if near_float32_floor else 40):
                new_beta = beta + t * float(direction[0]) if problem.fit_beta else beta
                new_b = b + t * (direction[1:] if problem.fit_beta else direction)
                if new_beta > 0:
                    # its Hessian diagonal is used only if the next gap stays above the reuse
                    # threshold, which a Newton step from below 10x that threshold usually crosses
                    trial = self.evaluate(new_beta, new_b, float64, hessian=gap > 10 * REUSE_HESSIAN_BELOW_GAP)
                    new_g = self.gradient(trial)
                    armijo = self.objective(new_beta, new_b, trial) <= current + 1e-4 * t * slope
                    if armijo or float(np.linalg.norm(new_g)) <= (1 - 1e-4 * t) * g_norm:
                        accepted = True
                        break
                t *= 0.5
            iterations += 1
            if accepted:
                step = t * direction
                inverse = _bfgs_update(inverse, step, new_g - g)
                beta, b, st, g = new_beta, new_b, trial, new_g
            new_gap = float(np.abs(g).max())
            stalled = not accepted or (near_float32_floor and new_gap > gap / 2)
            if float32_only and stalled:
                break
            if not float64 and not float32_only and (stalled or new_gap < problem.tol / 4):
                float64 = True  # float32 has done what it can: its rounding now limits the gap
                st = self.evaluate(beta, b, True, hessian=False)
                g = self.gradient(st)
            elif not accepted:
                break
        if not float64 and not float32_only:
            st = self.evaluate(beta, b, True, hessian=False)
        gap = float(np.abs(self.gradient(st)).max())
        return _Run(beta, b, st, iterations, gap < problem.tol, inverse)


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
            cross-entropy. ``"nll"`` requires that ``target`` are the proportions of these labels,
            since both come from the same likelihood.
        tol: stop when ``max_k |f_k - mean_i p_ik|`` (and the beta gradient) is below this, in float64.
        hold_bytes: keep one float32 copy in memory when it fits this budget: ``exp(z / T)`` with T
            fixed, the rows as given with ``"nll"`` (and, when two copies fit, ``exp(beta z)`` beside
            them for the profile iteration); else every pass streams the rows again.

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

    fit_beta, fits = temperature == "nll", 4.0 * n * c <= hold_bytes
    small = n * c < 2**20  # float64 throughout: passes cost nothing, and float32 would only add rounding
    profile = fit_beta and 8.0 * n * c <= hold_bytes and not small  # the rows and E: two float32 copies
    fixed_beta = None if temperature in ("nll", "confidence") else 1.0 / float(temperature)
    # nll passes need the rows themselves every time: the first pass holds them when they fit. With
    # T fixed the passes need exp(z/T), which the first pass computes and keeps (one float32 copy);
    # the profile path takes the mean softmax at T = 1 from it, for its first T.
    engine = Engine(source, None, hold=fit_beta and fits)
    prepared = prepare(engine, labels, keep_beta=1.0 if profile else fixed_beta if fits else None,
                       sum_columns=fit_beta)
    if not prepared.finite:
        raise ValueError("the logits hold NaN or infinite values")
    mean_true_logit, z_sub = prepared.true_logit_sum / n, prepared.z_sub
    if fit_beta:
        # Per-class constants in z only move b (beta z - b is unchanged with b += beta shift), but a
        # class far below the rest makes the beta curvature huge: centre the columns.
        engine.shift = (prepared.column_sums / n).astype(np.float32).astype(np.float64)
        z_sub = z_sub - engine.shift
        mean_true_logit -= float(label_proportions @ engine.shift)

    problem = _Problem(target, mean_true_logit if labels is not None else 0.0, fit_beta, tol, max_iter)
    accuracy = None if labels is None else Accuracy(engine.vector(labels, engine.xp.int64), np.log(target))
    if profile:
        log_m = np.log(np.maximum(prepared.kept_pass.moments, 1e-300))
        b1 = log_m - np.log(target) - engine.shift  # the first step at T = 1, in the centred frame
        run = _solve_nll(engine, problem, z_sub, labels[prepared.sub_rows], accuracy, b1, prepared.kept)
    else:
        if fit_beta:
            beta = _start_beta(z_sub, labels[prepared.sub_rows])
        else:
            beta = fixed_beta or 1.0 / _confidence_temperature(engine, labels)
        newton = _Newton(engine, problem, z_sub, hold=fits and not fit_beta, accuracy=accuracy, kept=prepared.kept)
        first = prepared.kept_pass if newton.kept is not None else None
        run = newton.run(beta, _first_step(newton, beta, np.zeros(c), first), float64=small)
    beta, b, st = run.beta, run.b, run.st

    moment_gaps = target - st.moments
    objective = st.lse + float(target @ b) - beta * problem.mean_true_logit
    cross_entropy = None
    if label_proportions is not None:  # L holds sum_k f_k b_k where the cross-entropy has the label mean of b
        cross_entropy = objective + float((label_proportions - target) @ b)
    if engine.shift is not None:
        b = b + beta * engine.shift
    log_q = b + np.log(target)
    log_q -= log_q.max() + math.log(np.exp(log_q - log_q.max()).sum())
    correct = None if labels is None else np.stack([prepared.correct_raw, st.correct])
    return PriorEstimate(log_q, 1.0 / beta, run.iterations, float(np.abs(moment_gaps).max()),
                         run.converged, cross_entropy,
                         st.mean_z - problem.mean_true_logit if fit_beta else None, moment_gaps, engine.passes,
                         correct)


def _first_step(newton: _Newton, beta: float, b: np.ndarray, st: Pass | None = None) -> np.ndarray:
    """``b + log(m / f)``: moves every class's mean probability to its target at once, which lands
    close to the optimum; in log space when a class's probability underflows everywhere. ``st``:
    the pass at ``(beta, b)`` when one was made already."""
    engine, target = newton.engine, newton.problem.target
    if st is not None:
        moments = st.moments
    elif newton.hold:
        moments = newton.evaluate(beta, b, False, hessian=False).moments
    else:
        moments = full_pass(engine, beta, b, False, engine.xp.float32, hessian=False).moments
    log_m = np.log(np.maximum(moments, 1e-300))
    if (moments < UNDERFLOW).any():
        log_m = log_moments(engine, beta, b)
    b = b + log_m - np.log(target)
    return b - b.max()


def _start_beta(z_sub: np.ndarray, y_sub: np.ndarray, b1: np.ndarray | None = None) -> float:
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
    """:func:`glacli.calibration.fit_temperature_nll` in float32, cache-sized pieces on two threads, by Newton steps
    from T = 1 (bounded to a factor 4 each; the safeguarded solver takes over if they do not
    settle): a start needs no more."""
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


def _solve_nll(engine: Engine, problem: _Problem, z_sub: np.ndarray, y_sub: np.ndarray,
               accuracy: Accuracy | None, b1: np.ndarray, kept: Kept) -> _Run:
    """``nll`` with the rows held: Newton on the profile ``phi(beta) = min_b L(beta, b)`` in float32
    (each ``b`` solved by kept passes), then the joint float64 Newton from there (see the module)."""
    inner = _Problem(problem.target, problem.mean_true_logit, False, 1e-6, problem.max_iter)
    newton = _Newton(engine, inner, z_sub, hold=True, kept=kept)  # kept: its memory is reused
    beta = _start_beta(z_sub, y_sub, b1)
    b = _first_step(newton, beta, np.zeros(engine.c))
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    inverse, iterations, slope, hess_beta_b, curvature, previous = None, 0, None, None, math.nan, None
    while True:
        run = newton.run(beta, b, float64=False, inverse=inverse, float32_only=True)
        b, inverse, iterations = run.b, run.inverse, iterations + run.iterations
        if inverse is None:  # b was solved before any step: no Hessian was needed until now
            inverse = _inverse(_newton_system(run.st, run.st.hess_diag, _subsample_hessian(z_sub, beta, b), False))
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
    joint = _joint_inverse(inverse, hess_beta_b, curvature) if curvature > 0 else None
    final = _Newton(engine, replace(problem, max_iter=max(1, problem.max_iter - iterations)), z_sub,
                    hold=False, accuracy=accuracy).run(beta, b, float64=True, inverse=joint)
    final.iterations += iterations
    return final


def _confidence_temperature(engine: Engine, labels: np.ndarray) -> float:
    """The T at which mean max-probability equals top-1 accuracy, by passes over the rows."""
    xp = engine.xp
    y_all = engine.vector(labels, xp.int64)
    correct = engine.reduce(lambda s, z: (float(xp.sum(xp.astype(
        xp.argmax(z, axis=1) == y_all[s:s + z.shape[0]], xp.float64))),))[0]

    def confidence(temperature: float) -> float:
        return engine.reduce(lambda _s, z: (float(xp.sum(xp.exp(xp.max(
            log_softmax(xp, engine.load(z, xp.float64, None) / temperature), axis=1)))),))[0] / engine.n

    return solve_temperature_confidence(confidence, correct / engine.n, engine.c)


def debiased_logits(logits: Any, log_prior: Any, temperature: float) -> Any:
    """``z / T - log q``: the zero-shot model with its label prior removed."""
    xp = array_namespace(logits)
    return logits / temperature - xp.asarray(np.asarray(log_prior), dtype=logits.dtype, device=device_of(logits))
