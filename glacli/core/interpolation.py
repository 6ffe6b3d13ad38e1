"""WiSE-FT's weight-space ensemble: ``(1 - alpha) * zero_shot + alpha * fine_tuned``, parameter by parameter.

Written as a two-term sum (not ``zs + alpha * (ft - zs)``) so that ``alpha = 0`` returns the
zero-shot weights and ``alpha = 1`` the fine-tuned ones bit for bit: ``1 * x + 0 * y == x`` in
floating point for finite ``y``. Works on numpy arrays and torch tensors alike.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

Array = TypeVar("Array")


def interpolate(zero_shot: Array, fine_tuned: Array, alpha: float) -> Array:
    """The weights ``alpha`` of the way from ``zero_shot`` to ``fine_tuned`` (same shapes)."""
    return (1.0 - alpha) * zero_shot + alpha * fine_tuned  # type: ignore[operator]


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """The mixing coefficients of one call: each in [0, 1] (outside is extrapolation, not WiSE-FT) and
    distinct; raises ``ValueError`` naming the first that is not."""
    seen: set[float] = set()
    for alpha in alphas:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha {alpha:g} is outside [0, 1]")
        if alpha in seen:
            raise ValueError(f"alpha {alpha:g} is given twice")
        seen.add(alpha)
    if not seen:
        raise ValueError("no alpha given")
    return list(alphas)
