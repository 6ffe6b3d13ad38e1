"""Passes over kept exponentials for the prior solver (pure array math, no I/O).

With the temperature fixed, :func:`keep` computes ``E = exp(beta z - b_ref - rowmax)`` once and
:func:`kept_pass` then costs two matrix-vector products: ``softmax(beta z_i - b)_k = E_ik w_k /
(E_i . w)`` with ``w = exp(b_ref - b)``. On numpy ``E`` is one [N, C] array and those products
run over all of it at once (multi-threaded BLAS; a pass reads ``E`` twice). :func:`prepare` is
the solver's first pass over the rows: it checks them, samples them and, when asked, keeps ``E``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glacli.base import chunking
from glacli.core.prior.passes import Engine, Pass, exp_scores

HESSIAN_ROWS = 4096
"""Rows of the fixed subsample that gives the dense Hessian block."""


@dataclass
class Kept:
    """``E = exp(beta z - b_ref - rowmax)`` of every piece (float32) and the row maxima (float64).
    On numpy the pieces are views of one [N, C] array, which the next :func:`keep` refills
    (``nll`` keeps ``E`` at each trial temperature: no new memory to fault in each time)."""

    beta: float
    b_ref: np.ndarray
    blocks: list[tuple[Any, Any]] = field(default_factory=list)
    storage: Any = None

    @property
    def tops(self) -> np.ndarray:
        """The row maxima of all pieces, one float64 array."""
        if "_tops" not in self.__dict__:
            self.__dict__["_tops"] = np.concatenate([np.asarray(top, dtype=np.float64) for _, top in self.blocks])
        return self.__dict__["_tops"]


def _storage(engine: Engine, reuse: Kept | None) -> Any:
    if not engine.on_numpy:
        return None
    if reuse is not None and reuse.storage is not None:
        return reuse.storage
    return np.empty((engine.n, engine.c), np.float32)


@dataclass
class BetaTerms:
    """The temperature's curvature terms at ``(beta, b)`` from kept ``E`` and the rows:
    ``mean_i Var_p(z_i)`` and ``-mean_i p_i (z_i - E_p z_i)`` [C] (the Hessian's beta row)."""

    hess_beta: float
    hess_beta_b: np.ndarray


def _kept_terms(engine: Engine, e: Any, top: Any, w_x: Any | None, hessian: bool, z: Any | None,
                curvature: bool) -> tuple:
    """One piece of a kept pass: sums over its rows of ``log d_i``, ``E_i / d_i`` and then
    :func:`_kept_extras` (all without the ``w`` factor, which :func:`_kept_result` applies).
    ``w_x`` None means ``w = 1`` (``b = b_ref``)."""
    xp, f64, to_np = engine.xp, engine.xp.float64, engine.numpy
    d = e @ (engine.ones(e.dtype) if w_x is None else w_x)  # BLAS: several times a row sum's speed
    r = 1.0 / d
    return (float(xp.sum(top + xp.log(xp.astype(d, f64)))), to_np(r @ e),
            *_kept_extras(engine, e, r, w_x, hessian, z, curvature))


def _kept_extras(engine: Engine, e: Any, r: Any, w_x: Any | None, hessian: bool, z: Any | None,
                 curvature: bool) -> list:
    """With ``r = 1 / d``: ``sum_i (E_i r_i)^2`` when asked, then ``E_p[z_i]`` (``z`` given) and the
    curvature terms."""
    xp, f64, to_np = engine.xp, engine.xp.float64, engine.numpy
    out: list = []
    if hessian:
        out.append(to_np((r * r) @ engine.product(e, e)))
    if z is not None:
        if engine.on_numpy and w_x is None and not curvature:  # row dot products, no temporary
            ez = np.einsum("ij,ij->i", e, z) * r
        else:
            ez_u = engine.product(e, z)
            ez = (ez_u @ (engine.ones(e.dtype) if w_x is None else w_x)) * r
        out.append(float(xp.sum(xp.astype(ez, f64))))
        if curvature:
            col_pz = r @ ez_u
            ez_u *= z
            ez2 = (ez_u @ (engine.ones(e.dtype) if w_x is None else w_x)) * r
            out += [float(xp.sum(xp.clip(xp.astype(ez2, f64) - xp.astype(ez, f64) ** 2, min=0.0))),
                    to_np(col_pz) - to_np((r * ez) @ e)]
    return out


def _kept_result(parts: list, w: np.ndarray, n: int, hessian: bool, beta_terms: str | None
                 ) -> tuple[Pass, BetaTerms | None]:
    moments = w * parts[1] / n
    st = Pass(parts[0] / n, moments, moments - w * w * parts[2] / n if hessian else None)
    rest = parts[3 if hessian else 2:]
    if beta_terms is None:
        return st, None
    st.mean_z = rest[0] / n
    if beta_terms != "curvature":
        return st, None
    return st, BetaTerms(rest[1] / n, -w * rest[2] / n)


def _keep_precise(engine: Engine, piece: np.ndarray, beta: float, b_ref: np.ndarray, out: np.ndarray,
                  hessian: bool, ones_and_shift: np.ndarray) -> tuple:
    """One piece of :func:`keep` with the temperature's gradient exact to ~2e-9: the scores
    ``beta z - b - rowmax`` in float64 (only the exp in float32) and ``E_p[z]`` summed in float64.
    In float32 the scores near the row maximum, which carry the probability, are rounded at the
    logits' scale, which biases the gradient, a difference of numbers at that scale, by ~1e-7.
    ``ones_and_shift``: [C, 2] float64, ones and the shift (zeros without one)."""
    s = engine.scratch("s64", piece.shape, np.float64)
    np.multiply(piece, np.float64(beta), out=s)  # beta z - (b + beta shift): the rows as given
    s -= b_ref if engine.shift is None else b_ref + beta * engine.shift
    top = s.max(1)
    s -= top[:, None]
    np.copyto(out, s, casting="same_kind")
    e = np.exp(out, out=out)
    np.copyto(s, e)  # float64 copy: row sums and products with the shift in float64 (BLAS)
    mass_shift = s @ ones_and_shift
    ez = np.einsum("ij,ij->i", e, piece, dtype=np.float64) - mass_shift[:, 1]
    ez /= mass_shift[:, 0]
    r = (1.0 / mass_shift[:, 0]).astype(np.float32)
    sums = [float(np.sum(top + np.log(mass_shift[:, 0]))), (r @ e).astype(np.float64),
            *_kept_extras(engine, e, r, None, hessian, None, False)]
    return (e, top), (*sums, float(ez.sum()))


def keep(engine: Engine, beta: float, b_ref: np.ndarray, reuse: Kept | None = None, hessian: bool = False,
         beta_terms: str | None = None) -> tuple[Kept, Pass, BetaTerms | None]:
    """Compute and keep ``E`` at ``b_ref`` (float32), one exp pass, into ``reuse``'s memory when
    given; the same pass gives what :func:`kept_pass` would at ``b_ref``. With ``beta_terms=
    "gradient"`` (``nll``'s later trial temperatures, near the optimum) the gradient is exact to
    float32 storage (:func:`_keep_precise`), so the float64 check usually confirms at once."""
    xp = engine.xp
    b_x, shift = engine.vector(b_ref, xp.float32), engine.shift_vector(xp.float32)
    storage = _storage(engine, reuse)
    precise = beta_terms == "gradient" and engine.on_numpy
    if precise:
        ones_and_shift = np.stack([np.ones(engine.c), np.zeros(engine.c) if engine.shift is None else engine.shift], 1)

    def exps(start: int, piece: Any) -> tuple:
        out = None if storage is None else storage[start:start + piece.shape[0]]
        if precise:
            return _keep_precise(engine, piece, beta, b_ref, out, hessian, ones_and_shift)
        z = engine.load(piece, xp.float32, shift)
        e, top = exp_scores(engine, z, beta, b_x, "", out=out)
        top = xp.astype(top, xp.float64)
        return (e, top), _kept_terms(engine, e, top, None, hessian, z if beta_terms else None,
                                     beta_terms == "curvature")

    engine.passes += 1
    kept = Kept(beta, np.asarray(b_ref, dtype=np.float64).copy(), [], storage)
    total: list | None = None
    for block, parts in engine.map(exps, engine.pieces()):
        kept.blocks.append(block)
        total = list(parts) if total is None else [a + b for a, b in zip(total, parts)]
    return (kept, *_kept_result(total, np.ones(engine.c), engine.n, hessian, beta_terms))


def kept_pass(engine: Engine, kept: Kept, b: np.ndarray, hessian: bool,
              beta_terms: str | None = None) -> tuple[Pass, BetaTerms | None]:
    """``softmax(beta z_i - b)_k = E_ik w_k / d_i`` with ``w = exp(b_ref - b)``: two matrix-vector
    products per piece. With the rows held, ``beta_terms`` adds the temperature's terms:
    ``"gradient"`` (``Pass.mean_z``) or ``"curvature"`` (also the beta row of the Hessian)."""
    xp = engine.xp
    w = np.exp(kept.b_ref - b)
    w_x = engine.vector(w, xp.float32)
    if kept.storage is not None:
        return _kept_result(_kept_pass_whole(engine, kept, w_x, hessian, beta_terms), w, engine.n, hessian, beta_terms)
    shift = engine.shift_vector(xp.float32)

    def terms(e: Any, top: Any, piece: Any = None) -> tuple:
        z = None if piece is None else engine.load(piece, xp.float32, shift)
        return _kept_terms(engine, e, top, w_x, hessian, z, beta_terms == "curvature")

    items: Iterable[tuple] = kept.blocks
    if beta_terms:
        items = ((e, top, piece) for (e, top), (_start, piece) in zip(kept.blocks, engine.pieces()))
    return _kept_result(engine.reduce(terms, items), w, engine.n, hessian, beta_terms)


def _kept_pass_whole(engine: Engine, kept: Kept, w_x: np.ndarray, hessian: bool, beta_terms: str | None) -> list:
    """:func:`kept_pass` on numpy, where ``E`` is one array: ``d = E w`` and ``E^T (1/d)`` as two
    matrix-vector products over all rows (multi-threaded BLAS, memory-bound: a pass reads ``E``
    twice), and only the extra terms piece by piece."""
    engine.passes += 1
    d = kept.storage @ w_x
    r = np.float32(1.0) / d
    parts = [float(np.sum(kept.tops + np.log(d.astype(np.float64)))), (r @ kept.storage).astype(np.float64)]
    if not hessian and not beta_terms:
        return parts
    shift = engine.shift_vector(np.float32)

    def extras(start: int, piece: Any) -> list:
        rows = slice(start, start + piece.shape[0])
        z = None if not beta_terms else engine.load(piece, np.float32, shift)
        return _kept_extras(engine, kept.storage[rows], r[rows], w_x, hessian, z, beta_terms == "curvature")

    total: list | None = None
    for part in engine.map(extras, engine.pieces() if beta_terms else
                           ((start, kept.storage[start:start + rows]) for start, rows in _row_pieces(engine))):
        total = list(part) if total is None else [a + b for a, b in zip(total, part)]
    return parts + total


def _row_pieces(engine: Engine) -> Iterator[tuple[int, int]]:
    """``(first row, rows)`` of cache-sized pieces over all rows."""
    step = chunking.cache_rows(engine.c)
    for start in range(0, engine.n, step):
        yield start, min(step, engine.n - start)


@dataclass
class Prepared:
    """What the first pass over the raw rows gives: finiteness, the label term, the column means,
    the subsample, the right predictions of ``z`` itself, and ``E`` at ``b = 0`` when asked."""

    finite: bool
    true_logit_sum: float
    column_sums: np.ndarray
    z_sub: np.ndarray
    sub_rows: np.ndarray
    correct_raw: np.ndarray | None
    kept: Kept | None
    kept_pass: Pass | None
    """What :func:`kept_pass` gives at ``b = 0``, with ``kept``."""


def prepare(engine: Engine, labels: np.ndarray | None, keep_beta: float | None = None,
            sum_columns: bool = False) -> Prepared:
    """One pass: non-finite values, ``sum_i z_{i, y_i}`` (float64), column sums (when asked; a
    centring constant), the right predictions of ``z``, every k-th row (at most
    :data:`HESSIAN_ROWS`) as float64 numpy, and with ``keep_beta`` also ``E = exp(keep_beta z -
    rowmax)`` and what :func:`kept_pass` gives at ``b = 0``, so that a solver with T fixed reads
    the rows once before its float64 check."""
    xp, to_np = engine.xp, engine.numpy
    y_all = None if labels is None else engine.vector(labels, xp.int64)
    step = max(1, math.ceil(engine.n / HESSIAN_ROWS))
    zero = engine.vector(np.zeros(engine.c), xp.float32)
    storage = _storage(engine, None) if keep_beta is not None else None

    def terms(start: int, z: Any) -> tuple:
        bad = not bool(xp.all(xp.isfinite(z)))
        true_sum, right = 0.0, None
        if y_all is not None:
            y = y_all[start:start + z.shape[0]]
            true_sum = float(xp.sum(xp.astype(xp.take_along_axis(z, y[:, None], axis=1), xp.float64)))
            hit = to_np(xp.astype(xp.argmax(z, axis=1) == y, xp.float64))
            right = np.bincount(to_np(y).astype(np.int64), weights=hit, minlength=engine.c)
        first = (-start) % step
        rows = to_np(z[first::step]) if first < z.shape[0] else np.zeros((0, engine.c))
        kept, kept_terms = None, None
        if keep_beta is not None and not bad:
            out = None if storage is None else storage[start:start + z.shape[0]]
            e, top = exp_scores(engine, engine.load(z, xp.float32, None), keep_beta, zero, "", out=out)
            kept = (e, xp.astype(top, xp.float64))
            if storage is None:  # else summed over the whole array afterwards
                kept_terms = _kept_terms(engine, e, kept[1], None, False, None, False)
        sums = 0.0
        if sum_columns:  # a centring constant: float32 products are exact enough (BLAS)
            sums = to_np(engine.vector(np.ones(z.shape[0]), z.dtype) @ z)
        return bad, true_sum, sums, right, (start + first, rows), kept, kept_terms

    bad, true_sum, column_sums, correct, picked, kept = False, 0.0, np.zeros(engine.c), None, [], []
    kept_sums: list | None = None
    for part in engine.map(terms, engine.pieces()):
        bad |= part[0]
        true_sum += part[1]
        column_sums += part[2]
        correct = part[3] if correct is None else correct + part[3]
        picked.append(part[4])
        kept.append(part[5])
        if part[6] is not None:
            kept_sums = list(part[6]) if kept_sums is None else [a + b for a, b in zip(kept_sums, part[6])]
    z_sub = np.concatenate([rows for _, rows in picked])
    sub_rows = np.concatenate([np.arange(first, first + step * len(rows), step) for first, rows in picked])
    if keep_beta is None or bad:
        return Prepared(not bad, true_sum, column_sums, z_sub, sub_rows, correct, None, None)
    kept_e = Kept(keep_beta, np.zeros(engine.c), kept, storage)
    if storage is not None:
        kept_sums = _kept_pass_whole(engine, kept_e, engine.ones(np.float32), False, None)
        engine.passes -= 1  # part of this pass
    return Prepared(True, true_sum, column_sums, z_sub, sub_rows, correct, kept_e,
                    _kept_result(kept_sums, np.ones(engine.c), engine.n, False, None)[0])
