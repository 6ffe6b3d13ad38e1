"""Newton's method on the prior estimator's objective (pure array math, no I/O).

The iteration of :mod:`glacli.core.prior`: Newton steps with a line search on ``L(beta, b)``, the
dense ``b``-block of the Hessian from a fixed subsample of rows with its diagonal raised to the
exact one, improved by BFGS updates from the gradients the passes give anyway; passes in float32
while each iteration at least halves the gap, the last one in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glacli.core.prior.kept import Kept, keep, kept_pass
from glacli.core.prior.passes import Accuracy, Engine, Pass, full_pass, log_moments

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


def subsample_hessian(z_sub: np.ndarray, beta: float, b: np.ndarray) -> np.ndarray:
    """``mean_i diag(p_i) - p_i p_i^T`` over the subsample, float64 [C, C] (float32 inside: it only shapes the step)."""
    p = (z_sub * beta - b).astype(np.float32)
    p -= p.max(1, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(1, keepdims=True)
    return np.diag(p.mean(0, dtype=np.float64)) - (p.T @ p).astype(np.float64) / len(p)


def newton_system(st: Pass, diag: np.ndarray, h_sub: np.ndarray, fit_beta: bool) -> np.ndarray:
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


def regularised_inverse(h: np.ndarray) -> np.ndarray:
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


def joint_inverse(inverse_bb: np.ndarray, hess_beta_b: np.ndarray, curvature: float) -> np.ndarray:
    """The inverse of ``[[h, u^T], [u, H]]`` from ``H^-1``, ``u`` and the Schur complement
    ``h - u^T H^-1 u`` (the profile's curvature): no new factorisation for the joint Newton."""
    v = inverse_bb @ hess_beta_b
    out = np.empty((len(v) + 1, len(v) + 1))
    out[0, 0] = 1.0 / curvature
    out[0, 1:] = out[1:, 0] = -v / curvature
    out[1:, 1:] = inverse_bb + np.outer(v, v) / curvature
    return out


@dataclass
class Problem:
    """What the Newton iteration needs besides the rows: ``f``, the label term, and the stopping rule."""

    target: np.ndarray
    mean_true_logit: float
    fit_beta: bool
    tol: float
    max_iter: int


@dataclass
class Run:
    """Where a Newton run ended: the point, its pass, the iterations, convergence, the inverse Hessian."""

    beta: float
    b: np.ndarray
    st: Pass
    iterations: int
    converged: bool
    inverse: np.ndarray | None


class Newton:
    """Newton's method on ``L``: full passes (beta free, or rows too large to keep) or kept-``E`` passes."""

    def __init__(self, engine: Engine, problem: Problem, z_sub: np.ndarray, hold: bool,
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
            float32_only: bool = False) -> Run:
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
            # refreshed only from a pass that carries the Hessian's terms (trial passes near the
            # threshold skip them: the BFGS-updated inverse goes on instead)
            if inverse is None or (gap > REUSE_HESSIAN_BELOW_GAP and not given and st.hess_diag is not None):
                h_sub = subsample_hessian(self.z_sub, beta, b)
                inverse = regularised_inverse(newton_system(st, diag, h_sub, problem.fit_beta))
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
        return Run(beta, b, st, iterations, gap < problem.tol, inverse)


def first_step(newton: Newton, beta: float, b: np.ndarray, st: Pass | None = None) -> np.ndarray:
    """:func:`fixed_point_step` from ``(beta, b)``; ``st``: the pass there when one was made already."""
    engine = newton.engine
    if st is not None:
        moments = st.moments
    elif newton.hold:
        moments = newton.evaluate(beta, b, False, hessian=False).moments
    else:
        moments = full_pass(engine, beta, b, False, engine.xp.float32, hessian=False).moments
    return fixed_point_step(engine, newton.problem.target, beta, b, moments)


def fixed_point_step(engine: Engine, target: np.ndarray, beta: float, b: np.ndarray,
                     moments: np.ndarray) -> np.ndarray:
    """``b + log(m / f)`` from the mean predicted distribution ``m`` at ``(beta, b)``: moves every
    class's mean probability to its target at once, which lands close to the optimum; ``log m`` in
    log space (one more pass) when a class's probability underflows everywhere."""
    log_m = np.log(np.maximum(moments, 1e-300))
    if (moments < UNDERFLOW).any():
        log_m = log_moments(engine, beta, b)
    b = b + log_m - np.log(target)
    return b - b.max()
