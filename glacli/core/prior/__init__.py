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
from typing import Any

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as device_of

from glacli.base.types import PriorEstimate
from glacli.core.calibration import log_softmax, solve_temperature_confidence
from glacli.core.prior.kept import prepare
from glacli.core.prior.newton import Newton, Problem, first_step, fixed_point_step
from glacli.core.prior.passes import Accuracy, Engine, LogitSource
from glacli.core.prior.profile import solve_nll, start_beta

__all__ = ["DEFAULT_TOL", "LogitSource", "class_proportions", "debiased_logits", "estimate_prior"]

DEFAULT_TOL = 1e-8


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

    problem = Problem(target, mean_true_logit if labels is not None else 0.0, fit_beta, tol, max_iter)
    accuracy = None if labels is None else Accuracy(engine.vector(labels, engine.xp.int64), np.log(target))
    if profile:
        # the first step at T = 1 from the raw rows, which in the centred frame is at b = -shift
        b1 = fixed_point_step(engine, target, 1.0, -engine.shift, prepared.kept_pass.moments)
        run = solve_nll(engine, problem, z_sub, labels[prepared.sub_rows], accuracy, b1, prepared.kept)
    else:
        if fit_beta:
            beta = start_beta(z_sub, labels[prepared.sub_rows])
        else:
            beta = fixed_beta or 1.0 / _confidence_temperature(engine, labels)
        newton = Newton(engine, problem, z_sub, hold=fits and not fit_beta, accuracy=accuracy, kept=prepared.kept)
        first = prepared.kept_pass if newton.kept is not None else None
        run = newton.run(beta, first_step(newton, beta, np.zeros(c), first), float64=small)
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
