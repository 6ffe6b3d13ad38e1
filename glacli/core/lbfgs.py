"""Limited-memory BFGS for smooth convex objectives in torch (the linear probe's solver; array math).

Kept apart from :mod:`glacli.core.probe`, which owns the probe's objective, the penalty search and
the orchestration: this module knows only ``objective(theta) -> (value, gradient)``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Pair = tuple[torch.Tensor, torch.Tensor, float]
"""A curvature pair ``(s, y, 1 / s.y)``: a step and the change of the gradient along it."""

FLAT_STEPS = 3
"""Consecutive steps without a decrease beyond working precision after which L-BFGS stops."""


def lbfgs(objective: Callable[[torch.Tensor], tuple[float, torch.Tensor]], theta: torch.Tensor,
          small_enough: Callable[[torch.Tensor, torch.Tensor], bool], max_iter: int, history: int,
          precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
          pairs: list[Pair] | None = None) -> tuple[torch.Tensor, float, int, bool]:
    """Limited-memory BFGS with a backtracking (Armijo) line search, for smooth convex objectives.

    ``objective(theta) -> (value, gradient)``; stops when ``small_enough(theta, gradient)``, when
    ``FLAT_STEPS`` steps in a row no longer decrease the value beyond the working precision of
    ``theta``'s dtype
    (converged as far as that precision allows), or after ``max_iter`` iterations (not converged).
    ``precondition(v)`` applies an approximate inverse Hessian ``H0`` (symmetric positive definite),
    the initial matrix of the two-loop recursion, scaled by ``s.y / y.H0 y`` of the newest pair
    (Nocedal & Wright, eq. 7.20 with ``H0`` for the identity); the default is the identity.
    ``pairs`` is the curvature history ``(s, y, 1 / s.y)``, oldest first: by default empty (the first
    step is a scaled steepest descent); given, the solver starts from those pairs (they must be
    secant pairs of this objective: ``y`` the change of its gradient along ``s``) and leaves its
    final history in the list.
    Returns ``(theta, value, iterations, converged)``.
    """
    precision = torch.finfo(theta.dtype).eps
    flat_steps = 0
    loss, grad = objective(theta)
    apply = precondition or (lambda v: v)
    steps: list[Pair] = [] if pairs is None else pairs  # (s, y, 1 / y.s), oldest first
    if len(steps) > history:
        del steps[: len(steps) - history]
    scale = 1.0  # s.y / y.H0 y of the newest pair
    if steps:
        s, y, rho = steps[-1]
        scale = 1.0 / (rho * float(y @ apply(y)))
    for iteration in range(max_iter):
        if small_enough(theta, grad):
            return theta, loss, iteration, True
        # The two-loop recursion updates one vector in place: a fresh temporary per pair and loop
        # (2 x history vectors of theta's size per iteration) cost more than the arithmetic.
        direction = grad.neg()
        coefficients = []
        for s, y, rho in reversed(steps):
            alpha = rho * float(s @ direction)
            direction.add_(y, alpha=-alpha)
            coefficients.append(alpha)
        if steps:
            direction = apply(direction).mul_(scale)
        else:
            direction.mul_(min(1.0, 1.0 / max(float(grad.abs().sum()), 1e-30)))
        for (s, y, rho), alpha in zip(steps, reversed(coefficients)):
            direction.add_(s, alpha=alpha - rho * float(y @ direction))
        slope = float(grad @ direction)
        if not slope < 0:  # lost descent (rounding): restart from steepest descent
            steps.clear()
            direction = -grad * min(1.0, 1.0 / max(float(grad.abs().sum()), 1e-30))
            slope = float(grad @ direction)
        step = 1.0
        while True:
            candidate = torch.add(theta, direction, alpha=step)
            new_loss, new_grad = objective(candidate)
            if new_loss <= loss + 1e-4 * step * slope:
                break
            # Minimiser of the quadratic through loss, slope and new_loss, kept within [0.1, 0.5] x step.
            curvature = new_loss - loss - slope * step
            guess = -slope * step * step / (2 * curvature) if curvature > 0 else 0.5 * step
            step = min(max(guess, 0.1 * step), 0.5 * step)
            if step < 1e-12:
                return theta, loss, iteration, True
        flat_steps = flat_steps + 1 if loss - new_loss <= precision * max(abs(loss), 1.0) else 0
        if flat_steps == FLAT_STEPS:
            return candidate, new_loss, iteration + 1, True
        s, y = candidate - theta, new_grad - grad
        sy = float(s @ y)
        if sy > 1e-12 * float(y @ y):
            steps.append((s, y, 1.0 / sy))
            scale = sy / float(y @ apply(y))
            if len(steps) > history:
                steps.pop(0)
        theta, loss, grad = candidate, new_loss, new_grad
    return theta, loss, max_iter, small_enough(theta, grad)
