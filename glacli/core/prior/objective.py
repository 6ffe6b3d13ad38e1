"""The prior estimator's objective over the rows, kept or streamed (array math, no I/O).

``L(beta, b) = mean_i logsumexp(beta z_i - b) + f . b - beta mean_i z_{i,y_i}``, one pass per evaluation,
every pass summing with one kernel (:meth:`Objective._terms`): log-partition, moments ``mean_i p_i``, the
Hessian's diagonal, with T free ``mean_i E_p[z_i]`` (:mod:`glacli.core.calibration`'s kernel). A pass may
keep ``E = exp(beta z - b_ref - rowmax)`` in float32 for later passes: ``p_ik = E_ik w_k / (E_i . w)``,
``w = exp(b_ref - b)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from glacli.core.calibration import expected_logits
from glacli.core.prior.rows import Rows

SUBSAMPLE_ROWS = 4096
"""Rows of the fixed subsample that shapes the Newton step (its dense Hessian)."""
REFERENCE_DRIFT = 30.0
"""Kept ``E`` is recomputed once ``b`` moved this far from ``b_ref`` (float32 range)."""


@dataclass
class Point:
    """What one pass gives at ``(beta, b)`` (float64 numpy)."""
    lse: float                       # mean_i logsumexp(beta z_i - b)
    moments: np.ndarray              # mean_i p_i                          [C]
    hess_diag: np.ndarray | None     # mean_i p_i (1 - p_i)                [C]
    mean_z: float = math.nan         # mean_i E_p[z_i] (temperature free)
    h_beta: float = math.nan         # mean_i Var_p(z_i): the Hessian's beta-beta entry
    h_beta_b: np.ndarray | None = None  # -mean_i p_i (z_i - E_p z_i): its beta row [C]
    beta: float = math.nan
    b: np.ndarray | None = None


@dataclass
class Kept:
    """``E`` at ``(beta, b_ref)`` as ``(E, rowmax)`` pieces; on numpy views of ``storage`` [N, C] float32."""
    beta: float
    b_ref: np.ndarray
    pieces: list
    storage: Any
    tops: Any


class Objective:
    """``L`` over ``rows``: ``target`` the proportions ``f``, ``mean_true_logit`` the label term,
    ``fit_beta`` whether passes also give ``mean_i E_p[z_i]``, ``keep`` whether float32 passes may
    keep ``E`` in memory (``keep_sums``: the precision of such a pass's own sums; ``E`` is float32).
    ``shift``: column constants taken out of ``z`` (they only move ``b``)."""

    def __init__(self, rows: Rows, target: np.ndarray, fit_beta: bool, keep: bool):
        self.rows, self.target, self.fit_beta, self.keep = rows, target, fit_beta, keep
        self.mean_true_logit, self.shift, self.kept, self.keep_sums = 0.0, None, None, "float32"

    def value(self, point: Point) -> float:
        return point.lse + float(self.target @ point.b) - point.beta * self.mean_true_logit

    def gradient(self, point: Point, fit_beta: bool) -> np.ndarray:
        """``dL/db`` and, with ``fit_beta``, ``dL/dbeta`` first."""
        g_b = self.target - point.moments
        return np.concatenate([[point.mean_z - self.mean_true_logit], g_b]) if fit_beta else g_b

    def evaluate(self, beta: float, b: np.ndarray, dtype: str, hessian: bool, curvature: bool = False) -> Point:
        """One pass at ``(beta, b)`` in ``dtype``; ``curvature``: also the temperature's Hessian terms."""
        if dtype == "float32" and self.keep:
            if (kept := self.kept) is not None and kept.beta == beta and abs(b - kept.b_ref).max() <= REFERENCE_DRIFT:
                return self._kept_pass(b, hessian, curvature)
            return self._pass(beta, b, self.keep_sums, hessian, curvature, keep=True)[0]
        return self._pass(beta, b, dtype, hessian, curvature)[0]

    def _load(self, piece: Any, dtype: str) -> Any:
        """``piece - shift`` in ``dtype`` (a per-thread buffer on numpy; the piece is never written)."""
        rows, xp = self.rows, self.rows.xp
        if not rows.on_numpy:
            piece = xp.astype(piece, getattr(xp, dtype), copy=False)
            return piece if self.shift is None else piece - rows.vector(self.shift, piece.dtype)
        if self.shift is None and piece.dtype == dtype:
            return piece
        out = rows.scratch("z", piece.shape, dtype)
        if piece.dtype == dtype:
            return np.subtract(piece, self.shift.astype(dtype), out=out)
        np.copyto(out, piece)  # a cast, then the subtraction in dtype: faster than one mixed-type loop
        return out if self.shift is None else np.subtract(out, self.shift, out=out)

    def _exp(self, z: Any, beta: float, b_x: Any, out: Any = None) -> tuple[Any, Any]:
        """``exp(beta z - b - rowmax)`` (into ``out`` or a per-thread buffer on numpy) and the row maxima."""
        rows, xp = self.rows, self.rows.xp
        s = rows.scratch("s", z.shape, z.dtype) if out is None and rows.on_numpy else out
        s = np.subtract(np.multiply(z, z.dtype.type(beta), out=s), b_x, out=s) if rows.on_numpy else z * beta - b_x
        top = xp.max(s, axis=1)
        s -= top[:, None]
        return (np.exp(s, out=s) if rows.on_numpy else xp.exp(s)), xp.astype(top, xp.float64)

    def _terms(self, e: Any, top: Any, w: Any, z: Any, hessian: bool, curvature: bool = False) -> list:
        """The kernel of every pass, on one piece of ``E`` (``w`` None: weights one): sums over its rows
        of ``log d_i + rowmax_i``, ``E_i / d_i``, ``(E_i / d_i)^2`` (``hessian``), ``E_p[z_i]`` (``z``
        given) and the temperature's Hessian terms (``curvature``)."""
        xp, to_np = self.rows.xp, self.rows.numpy
        if z is None:
            d = e @ (self.rows.vector(np.ones(e.shape[1]), e.dtype) if w is None else w)
        else:
            d, mean_z, var_z, columns = expected_logits(xp, e, z, w, second=curvature)
        r = 1.0 / d
        out = [float(xp.sum(top + xp.log(xp.astype(d, xp.float64)))), to_np(r @ e)]
        if hessian:
            out.append(to_np((r * r) @ (e * e)))
        if z is not None:
            out.append(float(xp.sum(xp.astype(mean_z, xp.float64))))
        if curvature:
            out += [float(xp.sum(xp.astype(var_z, xp.float64))), to_np(columns) - to_np((r * mean_z) @ e)]
        return out

    def _point(self, parts: list, beta: float, b: np.ndarray, w: np.ndarray | None, hessian: bool) -> Point:
        n, w = self.rows.n, np.ones(self.rows.c) if w is None else w
        moments, rest = w * parts[1] / n, parts[2 + hessian:] + [math.nan] * 3
        return Point(parts[0] / n, moments, moments - w * w * parts[2] / n if hessian else None, rest[0] / n,
                     rest[1] / n, None if len(rest) < 6 else -w * rest[2] / n, beta, np.asarray(b, dtype=np.float64))

    def _pass(self, beta: float, b: np.ndarray, dtype: str, hessian: bool, curvature: bool = False,
              keep: bool = False, first: Callable[[int, Any], tuple] | None = None) -> tuple[Point, list]:
        """A pass over the rows themselves; ``keep``: ``E`` stays in memory (the last keep's, on numpy);
        ``first``: the scan's own sums of each piece, returned beside the point."""
        rows, storage, pieces = self.rows, None, []
        if keep and rows.on_numpy:
            storage = self.kept.storage if self.kept is not None else np.empty((rows.n, rows.c), np.float32)
        b_x = rows.vector(b, getattr(rows.xp, dtype))

        def terms(start: int, piece: Any) -> tuple:
            extra = () if first is None else first(start, piece)
            z = self._load(piece, dtype)
            slot = None if storage is None else storage[start:start + piece.shape[0]]
            e, top = self._exp(z, beta, b_x, slot if dtype == "float32" else None)
            if keep:  # E is kept in float32, whatever the precision of the sums
                if dtype != "float32" and slot is None:
                    slot = rows.xp.astype(e, rows.xp.float32)
                elif dtype != "float32":
                    np.copyto(slot, e)
                pieces.append((start, e if slot is None else slot, top))
            return (*self._terms(e, top, None, z if self.fit_beta else None, hessian, curvature), *extra)

        parts = rows.reduce(terms)
        if keep:
            pieces.sort(key=lambda item: item[0])
            self.kept = Kept(beta, np.asarray(b, dtype=np.float64).copy(), [(e, top) for _, e, top in pieces],
                             storage, None if storage is None else np.concatenate([top for *_, top in pieces]))
        n_terms = 2 + hessian + self.fit_beta + 2 * curvature
        return self._point(parts[:n_terms], beta, b, None, hessian), parts[n_terms:]

    def _kept_pass(self, b: np.ndarray, hessian: bool, curvature: bool) -> Point:
        """A pass over kept ``E`` on the passes' pool: piece by piece with the Hessian's diagonal or the
        temperature's terms (reading the rows again), and on torch."""
        kept, rows = self.kept, self.rows
        w = np.exp(kept.b_ref - b)
        w_x = rows.vector(w, rows.xp.float32)
        if curvature:
            items = ((e, top, piece) for (e, top), (_, piece) in zip(kept.pieces, rows.pieces()))
            parts = rows.reduce(lambda e, top, piece: self._terms(
                e, top, w_x, self._load(piece, "float32"), hessian, True), items)
        else:  # the value and gradient alone over storage: one large row block per worker
            cuts = np.linspace(0, rows.n, rows.workers + 1).astype(int)
            blocks = kept.pieces if kept.storage is None or hessian else [
                (kept.storage[lo:hi], kept.tops[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:])]
            parts = rows.reduce(lambda e, top: self._terms(e, top, w_x, None, hessian), blocks)
        return self._point(parts, kept.beta, b, w, hessian)

    def scan(self, labels: np.ndarray | None, keep_beta: float | None,
             centre: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, Point | None]:
        """The first pass over the rows as given: refuses non-finite values, sets the label term and,
        with ``centre`` (the label proportions), takes the column means out of ``z`` (per-class constants
        only move ``b``, but a class far below the rest makes the beta curvature huge). Returns
        :data:`SUBSAMPLE_ROWS` random rows (float32, centred), their indices, and with ``keep_beta``
        (when ``E`` may be kept) the point at ``b = 0``."""
        rows, xp, to_np = self.rows, self.rows.xp, self.rows.numpy
        y_all = None if labels is None else rows.vector(labels, xp.int64)
        # rows at random (fixed seed), not every k-th: a file sorted or cycled by class would alias
        picks = np.sort(np.random.default_rng(0).choice(rows.n, min(rows.n, SUBSAMPLE_ROWS), replace=False))

        def first(start: int, z: Any) -> tuple:
            true_sum = 0.0 if y_all is None else float(xp.sum(xp.astype(xp.take_along_axis(
                z, y_all[start:start + z.shape[0]][:, None], axis=1), xp.float64)))
            sums = to_np(rows.vector(np.ones(z.shape[0]), z.dtype) @ z) if centre is not None else 0.0
            chosen = picks[np.searchsorted(picks, start):np.searchsorted(picks, start + z.shape[0])]
            return (not bool(xp.all(xp.isfinite(z))), true_sum, sums,
                    [(start, chosen, to_np(z[rows.vector(chosen - start, xp.int64)]))])

        point, parts = (self._pass(keep_beta, np.zeros(rows.c), "float32", False, keep=True, first=first)
                        if keep_beta is not None and self.keep else (None, rows.reduce(first)))
        bad, true_sum, sums, picked = parts
        if bad:
            raise ValueError("the logits hold NaN or infinite values")
        picked.sort(key=lambda item: item[0])
        z_sub, sub_rows = np.concatenate([sub for *_, sub in picked]), np.concatenate([at for _, at, _ in picked])
        self.mean_true_logit = true_sum / rows.n
        if centre is not None:  # float32-rounded, so that every precision sees one shift
            self.shift = (sums / rows.n).astype(np.float32).astype(np.float64)
            z_sub = z_sub - self.shift
            self.mean_true_logit -= float(centre @ self.shift)
        return z_sub.astype(np.float32), sub_rows, point
