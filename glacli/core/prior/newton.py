"""Newton's method on the prior estimator's objective, in the named stages of scikit-learn's
``NewtonSolver``: setup, gradient and Hessian, inner solve, line search, convergence check, finalize.

The variables are ``b`` (``T`` fixed) or ``(beta, b)``. The Hessian is dense only on a subsample of
rows, its ``b``-diagonal raised to the exact one; its inverse is refreshed while the gap is large, then
BFGS-updated. Passes run in float32 while it makes progress, then float64 to declare convergence.
"""
from __future__ import annotations

import numpy as np

from glacli.core.calibration import expected_logits
from glacli.core.prior.objective import Objective

REUSE_HESSIAN_BELOW_GAP = 1e-4
FLOAT32_FLOOR = 1e-6  # below it float32 rounding may stall: not halving the gap hands over to float64
MAX_RIDGE_RETRIES = 30  # each multiplies the ridge by 100: from 1e-12 past any finite Hessian's scale


def subsample_hessian(z_sub: np.ndarray, beta: float, b: np.ndarray, diag: np.ndarray, fit_beta: bool) -> np.ndarray:
    """The Hessian of ``L`` over the subsample rows (float32 inside: it only shapes the step), float64 [C, C]
    (``fit_beta``: ``beta`` first), its ``b``-diagonal raised to the exact ``diag`` (it stays positive
    semi-definite), the gauge direction ``b -> b + c`` fixed by adding ``1 1^T / C``."""
    z = z_sub.astype(np.float32, copy=False)
    s = z * np.float32(beta) - b.astype(np.float32)
    e = np.exp(s - s.max(1, keepdims=True))
    d, mean_z, var_z, columns = expected_logits(np, e, z, second=fit_beta)
    p = e / d[:, None]
    h_bb = np.diag(p.mean(0, dtype=np.float64)) - (p.T @ p).astype(np.float64) / len(p)
    h_bb += np.diag(np.maximum(diag - np.diag(h_bb), 0)) + 1.0 / len(b)
    if not fit_beta:
        return h_bb
    h_beta_b = -(columns - (mean_z / d) @ e).astype(np.float64) / len(p)
    return np.block([[np.array([[var_z.mean(dtype=np.float64)]]), h_beta_b[None]], [h_beta_b[:, None], h_bb]])


def joint_inverse(inverse_bb: np.ndarray, h_beta_b: np.ndarray, curvature: float) -> np.ndarray:
    """The inverse of ``[[h, u^T], [u, H]]`` from ``H^-1``, ``u`` and the Schur complement
    ``h - u^T H^-1 u`` (the profile's curvature): no new factorisation for the joint Newton."""
    v = inverse_bb @ h_beta_b
    return np.block([[np.array([[1.0]]), -v[None]], [-v[:, None], inverse_bb * curvature + np.outer(v, v)]]) / curvature


def regularised_inverse(h: np.ndarray) -> np.ndarray:
    """``(h + ridge I)^-1`` with the smallest ridge at which a Cholesky factorisation succeeds."""
    if np.isfinite(h).all():
        ridge, eye = 1e-12 * max(float(np.abs(np.diag(h)).max()), 1e-300), np.eye(len(h))
        for _ in range(MAX_RIDGE_RETRIES):
            try:
                np.linalg.cholesky(h + ridge * eye)
                return np.linalg.inv(h + ridge * eye)
            except np.linalg.LinAlgError:
                ridge *= 100
    raise ValueError("the Newton system is not positive definite at any ridge (non-finite curvature)")


class Newton:
    """Newton's method with an Armijo (or gradient-decrease) line search. After :meth:`solve`:
    ``point`` (the last pass), ``start`` (the first), ``iterations``, ``converged``, ``inverse`` (the
    inverse Hessian) and ``diag`` (the exact diagonal)."""
    def __init__(self, objective: Objective, z_sub: np.ndarray, fit_beta: bool, tol: float, max_iter: int):
        self.objective, self.z_sub, self.fit_beta, self.tol, self.max_iter = objective, z_sub, fit_beta, tol, max_iter

    def setup(self, beta: float, b: np.ndarray, dtype: str, inverse: np.ndarray | None,
              diag: np.ndarray | None) -> None:
        """The start point's pass (with the Hessian's diagonal unless ``diag`` is given)."""
        self.point = self.start = self.objective.evaluate(beta, b, dtype, hessian=diag is None)
        self.diag = self.point.hess_diag if diag is None else diag
        self.inverse, self.iterations = inverse, 0
        self.g = self.objective.gradient(self.point, self.fit_beta)

    gap = property(lambda self: float(np.abs(self.g).max()))

    def update_gradient_hessian(self) -> None:
        """Refresh the inverse from the subsample while the gap is large, from a pass that carries the diagonal."""
        if self.point.hess_diag is not None:
            self.diag = self.point.hess_diag
        if self.inverse is None or (self.gap > REUSE_HESSIAN_BELOW_GAP and self.point.hess_diag is not None):
            self.inverse = regularised_inverse(
                subsample_hessian(self.z_sub, self.point.beta, self.point.b, self.diag, self.fit_beta))

    def inner_solve(self) -> np.ndarray:
        return -(self.inverse @ self.g)

    def line_search(self, direction: np.ndarray, dtype: str) -> bool:
        """Halve the step until ``L`` falls enough (Armijo) or the gradient's norm does; on success
        move there and BFGS-update the inverse with the step and the gradient change it caused."""
        point, objective = self.point, self.objective
        slope, g_norm, current = float(self.g @ direction), float(np.linalg.norm(self.g)), objective.value(point)
        t, near_floor = 1.0, dtype == "float32" and self.gap < FLOAT32_FLOOR
        for _ in range(3 if near_floor else 40):
            beta = point.beta + t * direction[0] if self.fit_beta else point.beta
            if beta > 0:  # the trial's Hessian diagonal serves only while the gap stays large
                trial = objective.evaluate(beta, point.b + t * direction[self.fit_beta:], dtype,
                                           hessian=self.gap > 10 * REUSE_HESSIAN_BELOW_GAP)
                new_g = objective.gradient(trial, self.fit_beta)
                if (objective.value(trial) <= current + 1e-4 * t * slope
                        or float(np.linalg.norm(new_g)) <= (1 - 1e-4 * t) * g_norm):
                    self._bfgs_update(t * direction, new_g - self.g)
                    self.point, self.g = trial, new_g
                    return True
            t *= 0.5
        return False

    def _bfgs_update(self, step: np.ndarray, change: np.ndarray) -> None:
        """Skipped when the curvature along the step is not positive (rounding at the optimum)."""
        curvature = float(change @ step)
        if curvature > 1e-300:
            rho, hy = 1.0 / curvature, self.inverse @ change
            # H - rho (s hy' + hy s') + (rho^2 y.hy + rho) s s', as two outer products
            self.inverse = (self.inverse + np.outer(step, (rho * rho * float(change @ hy) + rho) * step - rho * hy)
                            - np.outer(rho * hy, step))

    def check_convergence(self, tol: float) -> bool:
        return self.gap < tol

    def finalize(self) -> Newton:
        if self.inverse is None:  # solved before any step: the caller may still need the Hessian
            self.update_gradient_hessian()
        self.converged = self.check_convergence(self.tol)
        return self

    def solve(self, beta: float, b: np.ndarray, dtypes: tuple[str, ...] = ("float32", "float64"),
              inverse: np.ndarray | None = None, diag: np.ndarray | None = None) -> Newton:
        """Iterate from ``(beta, b)`` in each precision of ``dtypes`` in turn: an earlier one stops at
        a quarter of the tolerance, when its step fails, or when it stops halving the gap near the
        float32 floor; the last one ends at the tolerance, ``max_iter``, or a failed line search."""
        self.setup(beta, b, dtypes[0], inverse, diag)
        for stage, dtype in enumerate(dtypes):
            if stage:
                self.point = self.objective.evaluate(self.point.beta, self.point.b, dtype, hessian=False)
                self.g = self.objective.gradient(self.point, self.fit_beta)
            tol = self.tol if stage == len(dtypes) - 1 else self.tol / 4
            while not self.check_convergence(tol) and self.iterations < self.max_iter:
                gap = self.gap
                self.update_gradient_hessian()
                accepted = self.line_search(self.inner_solve(), dtype)
                self.iterations += 1
                if not accepted or (dtype == "float32" and gap < FLOAT32_FLOOR and self.gap > gap / 2):
                    break
        return self.finalize()
