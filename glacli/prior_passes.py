"""Passes over the rows for the prior solver (pure array math, no I/O).

A pass streams a :class:`LogitSource` block by block, in the array namespace of its blocks (numpy
on a CPU, where the blocks run on all cores; torch on a GPU), and sums what the Newton iteration
of :mod:`glacli.prior` needs: the log-partition, the moments, the Hessian diagonal and, with the
temperature free, its row. With the temperature fixed, :func:`keep` computes
``E = exp(beta z - b_ref - rowmax)`` once and :func:`kept_pass` then costs two matrix-vector
products: ``softmax(beta z_i - b)_k = E_ik w_k / (E_i . w)`` with ``w = exp(b_ref - b)``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace
from array_api_compat import device as device_of

from glacli import chunking
from glacli.calibration import log_softmax

HESSIAN_ROWS = 8192
"""Rows of the fixed subsample that gives the dense Hessian block."""


@dataclass
class LogitSource:
    """The rows the solver passes over: ``blocks()`` yields [rows, C] arrays in the same order on
    every call (numpy on a CPU, torch tensors on a GPU). Streaming a file through it keeps memory
    at one block whatever ``n_rows`` is."""

    blocks: Callable[[], Iterable[Any]]
    n_rows: int
    n_classes: int

    @classmethod
    def from_array(cls, logits: Any) -> LogitSource:
        n, c = logits.shape
        rows = chunking.array_rows(c)
        return cls(lambda: (logits[start:start + rows] for start in range(0, n, rows)), n, c)


@dataclass
class Pass:
    """What one pass over the rows yields at ``(beta, b)`` (float64 numpy)."""

    lse: float                     # mean_i logsumexp(beta z_i - b)
    moments: np.ndarray            # mean_i p_i                                [C]
    hess_diag: np.ndarray | None   # mean_i p_i (1 - p_i)                      [C]
    mean_z: float = 0.0            # mean_i E_p[z_i]
    hess_beta: float = 0.0         # mean_i Var_p(z_i)
    hess_beta_b: np.ndarray | None = None   # -mean_i p_i (z_i - E_p z_i)   [C]
    correct: np.ndarray | None = None       # [2, C] right predictions per class: z, then z/T - log q


@dataclass
class Kept:
    """``E = exp(beta z - b_ref - rowmax)`` of every row block (float32) and the row maxima (float64)."""

    b_ref: np.ndarray
    blocks: list[tuple[Any, Any]] = field(default_factory=list)


class Engine:
    """Passes over a :class:`LogitSource` in its array namespace, blocks in parallel on a CPU."""

    def __init__(self, source: LogitSource, shift: np.ndarray | None, hold: bool = False):
        """``hold``: keep the rows in memory as the source gives them, so later passes read no file.
        (The shift is still taken out per pass, in the pass's dtype, so a float64 pass sees exactly
        what it would.)"""
        if hold:
            held = list(source.blocks())
            source = LogitSource(lambda: iter(held), source.n_rows, source.n_classes)
        self.source, self.shift = source, shift
        self.n, self.c = source.n_rows, source.n_classes
        first = next(iter(source.blocks()))
        self.xp = array_namespace(first)
        self.input_dtype = self.xp.float64 if first.dtype == self.xp.float64 else self.xp.float32
        self.device = device_of(first)
        self.cpu = is_numpy_namespace(self.xp) or str(self.device) == "cpu"
        self.workers = min(4, os.cpu_count() or 1) if self.cpu else 1
        self.passes = 0

    def vector(self, values: np.ndarray, dtype: Any) -> Any:
        return self.xp.asarray(np.asarray(values), dtype=dtype, device=self.device)

    def numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value.cpu() if hasattr(value, "cpu") else value, dtype=np.float64)

    def blocks(self, dtype: Any) -> Iterator[tuple[int, Any]]:
        """``(first row, block)`` in ``dtype`` with the shift taken out; cache-sized on a CPU."""
        xp, start = self.xp, 0
        shift = None if self.shift is None else self.vector(self.shift, dtype)
        rows = chunking.cache_rows(self.c) if self.cpu else None
        for block in self.source.blocks():
            block = xp.asarray(block, device=self.device)
            step = rows or block.shape[0]
            for offset in range(0, block.shape[0], step):
                piece = xp.astype(block[offset:offset + step], dtype, copy=False)
                yield start + offset, piece if shift is None else piece - shift
            start += block.shape[0]

    def reduce(self, fn: Callable[[int, Any], tuple], dtype: Any) -> list:
        """Sum over blocks of the tuples ``fn(start, block)`` returns (floats or numpy arrays)."""
        self.passes += 1
        total: list | None = None

        def add(parts: tuple) -> None:
            nonlocal total
            total = list(parts) if total is None else [a + b for a, b in zip(total, parts)]

        if self.workers == 1:
            for start, block in self.blocks(dtype):
                add(fn(start, block))
            return total
        with ThreadPoolExecutor(self.workers) as pool:
            pending = []
            for start, block in self.blocks(dtype):
                pending.append(pool.submit(fn, start, block))
                if len(pending) >= 4 * self.workers:  # bounded: a streamed file is never read ahead whole
                    add(pending.pop(0).result())
            for future in pending:
                add(future.result())
        return total


def softmax_terms(xp: Any, s: Any) -> tuple[Any, Any]:
    """``p = softmax(s)`` and ``logsumexp(s)`` per row."""
    top = xp.max(s, axis=1, keepdims=True)
    e = xp.exp(s - top)
    d = xp.sum(e, axis=1, keepdims=True)
    return e / d, top[:, 0] + xp.log(d[:, 0])


@dataclass
class Accuracy:
    """Labels and what turns ``beta z - b`` (shifted ``z``) into the debiased model, to count right
    predictions in the float64 passes: the solver's last pass then also scores the estimate."""

    labels: Any
    log_f: Any
    shift: Any | None


def full_pass(engine: Engine, beta: float, b: np.ndarray, fit_beta: bool, dtype: Any, hessian: bool,
               accuracy: Accuracy | None = None) -> Pass:
    """One pass computing the softmax of every row at ``(beta, b)``."""
    xp, to_np = engine.xp, engine.numpy
    b_x = engine.vector(b, dtype)
    f64 = xp.float64

    def correct(y: Any, logits: Any) -> np.ndarray:
        right = to_np(xp.astype(xp.argmax(logits, axis=1) == y, f64))
        return np.bincount(to_np(y).astype(np.int64), weights=right, minlength=engine.c)

    def terms(start: int, z: Any) -> tuple:
        s = z * beta - b_x
        p, lse = softmax_terms(xp, s)
        out = [float(xp.sum(lse, dtype=f64)), to_np(xp.sum(p, axis=0, dtype=f64)),
               to_np(xp.sum(p * p, axis=0, dtype=f64)) if hessian else 0.0]
        if accuracy is not None:
            y = accuracy.labels[start:start + z.shape[0]]
            raw = z if accuracy.shift is None else z + accuracy.shift
            out.append(np.stack([correct(y, raw), correct(y, s - accuracy.log_f)]))
        if fit_beta:
            pz = p * z
            ez = xp.sum(pz, axis=1)
            out += [float(xp.sum(ez, dtype=f64)),
                    float(xp.sum(xp.clip(xp.sum(pz * z, axis=1) - ez * ez, min=0.0), dtype=f64)),
                    to_np(xp.sum(pz, axis=0, dtype=f64)) - to_np(p.T @ ez)]
        return tuple(out)

    parts = engine.reduce(terms, dtype)
    n = engine.n
    moments = parts[1] / n
    out = Pass(parts[0] / n, moments, moments - parts[2] / n if hessian else None)
    if accuracy is not None:
        out.correct = parts.pop(3)
    if fit_beta:
        out.mean_z, out.hess_beta, out.hess_beta_b = parts[3] / n, parts[4] / n, -parts[5] / n
    return out


def keep(engine: Engine, beta: float, b_ref: np.ndarray) -> Kept:
    """Compute and keep ``E`` at ``b_ref`` (float32), one exp pass."""
    xp = engine.xp
    b_x = engine.vector(b_ref, xp.float32)
    engine.passes += 1
    kept = Kept(np.asarray(b_ref, dtype=np.float64).copy())
    for _start, z in engine.blocks(xp.float32):
        s = z * beta - b_x
        top = xp.max(s, axis=1, keepdims=True)
        kept.blocks.append((xp.exp(s - top), xp.astype(top[:, 0], xp.float64)))
    return kept


def kept_pass(engine: Engine, kept: Kept, b: np.ndarray, hessian: bool) -> Pass:
    """``softmax(beta z_i - b)_k = E_ik w_k / d_i`` with ``w = exp(b_ref - b)``: two matrix-vector products."""
    xp, f64 = engine.xp, engine.xp.float64
    w = np.exp(kept.b_ref - b)
    w_x = engine.vector(w, xp.float32)
    lse, inv, inv2 = 0.0, np.zeros(engine.c), np.zeros(engine.c)
    engine.passes += 1
    for e, top in kept.blocks:
        d = e @ w_x
        lse += float(xp.sum(top + xp.log(xp.astype(d, f64))))
        r = 1.0 / d
        inv += engine.numpy(r @ e)
        if hessian:
            inv2 += engine.numpy((r * r) @ (e * e))
    moments = w * inv / engine.n
    return Pass(lse / engine.n, moments, moments - w * w * inv2 / engine.n if hessian else None)


def log_moments(engine: Engine, beta: float, b: np.ndarray) -> np.ndarray:
    """``log mean_i softmax(beta * z_i - b)``, float64 [C], in log space: finite for classes whose
    probability underflows on every row (e.g. logits far below the others)."""
    xp = engine.xp
    b_x = engine.vector(b, xp.float64)
    top, total = np.full(engine.c, -math.inf), np.zeros(engine.c)
    engine.passes += 1
    for _start, z in engine.blocks(xp.float64):
        log_p = log_softmax(xp, z * beta - b_x)
        block_top = engine.numpy(xp.max(log_p, axis=0))
        new_top = np.maximum(top, block_top)
        total = total * np.exp(top - new_top) + engine.numpy(
            xp.sum(xp.exp(log_p - engine.vector(new_top, xp.float64)), axis=0))
        top = new_top
    return np.log(total) + top - math.log(engine.n)


@dataclass
class Prepared:
    """What one first pass over the raw rows gives: finiteness, the label term, the subsample, the column means."""

    finite: bool
    true_logit_sum: float
    column_sums: np.ndarray
    z_sub: np.ndarray
    sub_rows: np.ndarray


def prepare(engine: Engine, labels: np.ndarray | None) -> Prepared:
    """One pass: non-finite values, ``sum_i z_{i, y_i}`` and column sums (float64 sums of the float32
    values) and every k-th row (at most :data:`HESSIAN_ROWS`) as float64 numpy."""
    xp = engine.xp
    y_all = None if labels is None else engine.vector(labels, xp.int64)
    step = max(1, math.ceil(engine.n / HESSIAN_ROWS))

    def terms(start: int, z: Any) -> tuple:
        bad = 0.0 if bool(xp.all(xp.isfinite(z))) else 1.0
        true_sum = 0.0 if y_all is None else float(xp.sum(xp.take_along_axis(
            z, y_all[start:start + z.shape[0]][:, None], axis=1), dtype=xp.float64))
        first = (-start) % step
        rows = engine.numpy(z[first::step]) if first < z.shape[0] else np.zeros((0, engine.c))
        return bad, true_sum, engine.numpy(xp.sum(z, axis=0, dtype=xp.float64)), [(start + first, rows)]

    bad, true_sum, column_sums, picked = engine.reduce(terms, engine.input_dtype)
    engine.passes -= 1  # a check and a sample, not a solver pass
    picked.sort(key=lambda item: item[0])
    z_sub = np.concatenate([rows for _, rows in picked])
    sub_rows = np.concatenate([np.arange(first, first + step * len(rows), step) for first, rows in picked])
    return Prepared(bad == 0, true_sum, column_sums, z_sub, sub_rows)
