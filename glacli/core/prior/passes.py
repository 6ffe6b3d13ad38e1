"""Passes over the rows for the prior solver (pure array math, no I/O).

A pass streams a :class:`LogitSource` piece by piece, in the array namespace of its blocks (numpy
on a CPU, where the pieces run on all cores; torch on a GPU), and sums what the Newton iteration
of :mod:`glacli.core.prior` needs: the log-partition, the moments, the Hessian diagonal and, with the
temperature free, its row. (Passes over kept ``exp(beta z)`` are in :mod:`glacli.core.prior.kept`.)
The :class:`Engine` reads the next block of a file while one is worked on.

On a CPU a pass is bound by its elementwise work, so each piece is cache-sized and every
kernel writes into per-thread buffers instead of allocating a temporary per operation; sums
over classes are matrix-vector products (BLAS).
"""
from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace
from array_api_compat import device as device_of

from glacli.base import chunking
from glacli.core.calibration import log_softmax


@dataclass
class LogitSource:
    """The rows the solver passes over: ``blocks()`` yields [rows, C] arrays in the same order on
    every call (numpy on a CPU, torch tensors on a GPU). Streaming a file through it keeps memory
    at one block whatever ``n_rows`` is. ``like``: an empty array of the blocks' kind and device,
    so that the solver need not read a block to learn them (else the first block is read)."""

    blocks: Callable[[], Iterable[Any]]
    n_rows: int
    n_classes: int
    like: Any = None

    @classmethod
    def from_array(cls, logits: Any) -> LogitSource:
        n, c = logits.shape
        rows = chunking.array_rows(c)
        return cls(lambda: (logits[start:start + rows] for start in range(0, n, rows)), n, c, logits[:0])


@dataclass
class Pass:
    """What one pass over the rows yields at ``(beta, b)`` (float64 numpy)."""

    lse: float                     # mean_i logsumexp(beta z_i - b)
    moments: np.ndarray            # mean_i p_i                                [C]
    hess_diag: np.ndarray | None   # mean_i p_i (1 - p_i)                      [C]
    mean_z: float = 0.0            # mean_i E_p[z_i]
    hess_beta: float = 0.0         # mean_i Var_p(z_i)
    hess_beta_b: np.ndarray | None = None   # -mean_i p_i (z_i - E_p z_i)   [C]
    correct: np.ndarray | None = None       # [C] right predictions per class of z/T - log q


class Engine:
    """Passes over a :class:`LogitSource` in its array namespace, pieces in parallel on a CPU."""

    def __init__(self, source: LogitSource, shift: np.ndarray | None, hold: bool = False):
        """``hold``: the first pass keeps the rows in memory as the source gives them, so later
        passes read no file. (The shift is still taken out per pass, in the pass's dtype, so a
        float64 pass sees exactly what it would.)"""
        self.source, self.shift, self.hold = source, shift, hold
        self.held: list[Any] | None = None
        self.n, self.c = source.n_rows, source.n_classes
        like = source.like if source.like is not None else next(iter(source.blocks()))
        # numpy 2.1+ is itself an array-API namespace: its wrapper would only add start-up time
        self.xp = np if isinstance(like, np.ndarray) and hasattr(np, "astype") else array_namespace(like)
        self.input_dtype = self.xp.float64 if like.dtype == self.xp.float64 else self.xp.float32
        self.device = "cpu" if self.xp is np else device_of(like)
        self.on_numpy = is_numpy_namespace(self.xp)
        self.cpu = self.on_numpy or str(self.device) == "cpu"
        self.workers = min(4, os.cpu_count() or 1) if self.cpu else 1
        self.passes = 0
        self._local = threading.local()
        self._ones: dict[str, Any] = {}

    def ones(self, dtype: Any) -> Any:
        """A vector of C ones: row sums as matrix-vector products."""
        key = str(dtype)
        if key not in self._ones:
            self._ones[key] = self.vector(np.ones(self.c), dtype)
        return self._ones[key]

    def product(self, a: Any, b: Any) -> Any:
        """``a * b`` elementwise, into a per-thread buffer on numpy."""
        return np.multiply(a, b, out=self.scratch("e2", a.shape, a.dtype)) if self.on_numpy else a * b

    def vector(self, values: np.ndarray, dtype: Any) -> Any:
        return self.xp.asarray(np.asarray(values), dtype=dtype, device=self.device)

    def numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value.cpu() if hasattr(value, "cpu") else value, dtype=np.float64)

    def _source_blocks(self) -> Iterator[Any]:
        if self.held is not None:
            yield from self.held
            return
        held: list[Any] | None = [] if self.hold else None
        for block in _read_ahead(self.source.blocks()):
            block = self.xp.asarray(block, device=self.device)
            if held is not None:
                held.append(block)
            yield block
        if held is not None:
            self.held = held

    def pieces(self) -> Iterator[tuple[int, Any]]:
        """``(first row, piece)`` of the rows as the source gives them; cache-sized on a CPU."""
        start, rows = 0, chunking.cache_rows(self.c) if self.cpu else None
        for block in self._source_blocks():
            step = rows or block.shape[0]
            for offset in range(0, block.shape[0], step):
                yield start + offset, block[offset:offset + step]
            start += block.shape[0]

    def scratch(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """A per-thread buffer (numpy), reused by every piece of that shape."""
        buffers = self._local.__dict__.setdefault("buffers", {})
        key = (name, shape, np.dtype(dtype))
        if key not in buffers:
            buffers[key] = np.empty(shape, dtype)
        return buffers[key]

    def load(self, piece: Any, dtype: Any, shift: Any | None) -> Any:
        """``piece - shift`` in ``dtype`` (a per-thread buffer on numpy)."""
        if not self.on_numpy:
            piece = self.xp.astype(piece, dtype, copy=False)
            return piece if shift is None else piece - shift
        if shift is None and piece.dtype == dtype:
            return piece  # kernels never write into their input
        out = self.scratch("z", piece.shape, dtype)
        if shift is None:
            np.copyto(out, piece, casting="unsafe")
        else:
            np.subtract(piece, shift, out=out, casting="unsafe")
        return out

    def shift_vector(self, dtype: Any) -> Any | None:
        return None if self.shift is None else self.vector(self.shift, dtype)

    def map(self, fn: Callable[..., Any], items: Iterable[tuple]) -> Iterator[Any]:
        """``fn(*item)`` for every item, in order; in parallel on a CPU, a bounded number in flight
        (a streamed file is never read ahead whole)."""
        if self.workers == 1:
            for item in items:
                yield fn(*item)
            return
        with ThreadPoolExecutor(self.workers) as pool:
            pending = []
            for item in items:
                pending.append(pool.submit(fn, *item))
                if len(pending) >= 4 * self.workers:
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()

    def reduce(self, fn: Callable[..., tuple], items: Iterable[tuple] | None = None) -> list:
        """Sum over pieces (or ``items``) of the tuples ``fn(start, piece)`` returns (floats or numpy arrays)."""
        self.passes += 1
        total: list | None = None
        for parts in self.map(fn, self.pieces() if items is None else items):
            total = list(parts) if total is None else [a + b for a, b in zip(total, parts)]
        return total


def _read_ahead(blocks: Iterable[Any]) -> Iterator[Any]:
    """The blocks, the next one read by another thread while this one is worked on (a file read
    releases the GIL, so a pass over a file costs its compute, not compute plus reading)."""
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def offer(item: tuple) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for block in blocks:
                if not offer((block, None)):
                    return
            offer((done, None))
        except Exception as error:  # noqa: BLE001 -- raised again in the consuming thread
            offer((done, error))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while True:
            block, error = ready.get()
            if block is done:
                if error is not None:
                    raise error
                return
            yield block
    finally:
        stop.set()
        reader.join()


def _exp_inplace(xp: Any, a: Any) -> Any:
    return np.exp(a, out=a) if is_numpy_namespace(xp) else xp.exp(a)


def exp_scores(engine: Engine, z: Any, beta: float, b_x: Any, name: str, out: Any = None,
                predict: bool = False, log_f: Any = None, dtype: Any = None) -> tuple[Any, Any]:
    """``e = exp(beta z - b - rowmax)`` and ``rowmax``, in ``dtype`` (``z``'s by default), into ``out``
    or a per-thread buffer on numpy. ``predict``: ``e`` comes with ``argmax(beta z - b - log_f)``
    per row, the debiased model's prediction (``log_f`` None: f uniform)."""
    xp = engine.xp
    if engine.on_numpy:
        dtype = np.dtype(dtype or z.dtype)
        s = out if out is not None else engine.scratch(name, z.shape, dtype)
        np.multiply(z, dtype.type(beta), out=s)
        s -= b_x
    else:
        s = xp.astype(z, dtype, copy=False) * beta - b_x if dtype is not None else z * beta - b_x
    predicted = None
    if predict and log_f is None:
        predicted = xp.argmax(s, axis=1)
        top = xp.take_along_axis(s, predicted[:, None], axis=1)[:, 0]
    else:
        if predict:
            debiased = s - log_f if not engine.on_numpy else np.subtract(
                s, log_f, out=engine.scratch("e2", s.shape, s.dtype))
            predicted = xp.argmax(debiased, axis=1)
        top = xp.max(s, axis=1)
    s -= top[:, None]
    e = _exp_inplace(xp, s)
    return ((e, predicted) if predict else e), top


@dataclass
class Accuracy:
    """Labels and ``log f``, to count right predictions of the debiased model ``beta z - b - log f``
    in the float64 pass: the solver's last pass then also scores the estimate."""

    labels: Any
    log_f: np.ndarray

    @property
    def uniform(self) -> bool:
        return bool(np.ptp(self.log_f) == 0)


def full_pass(engine: Engine, beta: float, b: np.ndarray, fit_beta: bool, dtype: Any, hessian: bool,
               accuracy: Accuracy | None = None) -> Pass:
    """One pass computing the softmax of every row at ``(beta, b)``; ``hessian``: also the Hessian's
    diagonal and, with ``fit_beta``, its beta row (the gradient alone is all a float64 check needs).

    A float64 pass on numpy without the Hessian works on the rows as given: ``beta z - (b + beta
    shift)``, and ``E_p[z - shift] = E_p[z] - p . shift``, so the shifted float64 copy of every row
    is never made (exact in float64 either way; float32 passes keep the shifted rows, whose
    rounding is smaller)."""
    xp, to_np, f64 = engine.xp, engine.numpy, engine.xp.float64
    direct = engine.on_numpy and not hessian and np.dtype(dtype) == np.float64
    shift = engine.shift_vector(dtype)
    offset = b if not direct or engine.shift is None else b + beta * engine.shift
    b_x = engine.vector(offset, dtype)
    predict = accuracy is not None
    log_f = None if not predict or accuracy.uniform else engine.vector(accuracy.log_f, dtype)

    def terms(start: int, piece: Any) -> tuple:
        z = piece if direct else engine.load(piece, dtype, shift)
        e, top = exp_scores(engine, z, beta, b_x, "e", predict=predict, log_f=log_f, dtype=dtype)
        right = None
        if predict:
            y = accuracy.labels[start:start + z.shape[0]]
            right = np.bincount(to_np(y).astype(np.int64), weights=to_np(xp.astype(e[1] == y, f64)),
                                minlength=engine.c)
            e = e[0]
        d = e @ engine.ones(e.dtype)
        r = 1.0 / d
        out = [float(xp.sum(xp.astype(top, f64) + xp.log(xp.astype(d, f64)))), to_np(r @ e)]
        if hessian:
            out.append(to_np((r * r) @ engine.product(e, e)))
        else:
            out.append(0.0)
        if right is not None:
            out.append(right)
        if fit_beta:
            if engine.on_numpy and not hessian:  # row dot products, no temporary
                row_ez = np.einsum("ij,ij->i", e, z, dtype=e.dtype)
            else:
                ez_u = engine.product(e, z)
                row_ez = xp.sum(ez_u, axis=1)
            if direct and shift is not None:
                row_ez = row_ez - e @ shift
            ez = row_ez * r                                          # E_p[z_i]
            out.append(float(xp.sum(xp.astype(ez, f64))))
            if hessian:
                col_pz = r @ ez_u                                    # sum_i p_i z_i
                ez2 = xp.sum(ez_u * z, axis=1) * r if not engine.on_numpy else np.einsum("ij,ij->i", ez_u, z) * r
                out += [float(xp.sum(xp.clip(xp.astype(ez2, f64) - xp.astype(ez, f64) ** 2, min=0.0))),
                        to_np(col_pz) - to_np((r * ez) @ e)]
        return tuple(out)

    parts = engine.reduce(terms)
    n = engine.n
    moments = parts[1] / n
    out = Pass(parts[0] / n, moments, moments - parts[2] / n if hessian else None)
    if accuracy is not None:
        out.correct = parts.pop(3)
    if fit_beta:
        out.mean_z = parts[3] / n
        if hessian:
            out.hess_beta, out.hess_beta_b = parts[4] / n, -parts[5] / n
    return out


def log_moments(engine: Engine, beta: float, b: np.ndarray) -> np.ndarray:
    """``log mean_i softmax(beta * z_i - b)``, float64 [C], in log space: finite for classes whose
    probability underflows on every row (e.g. logits far below the others)."""
    xp = engine.xp
    b_x, shift = engine.vector(b, xp.float64), engine.shift_vector(xp.float64)
    top, total = np.full(engine.c, -math.inf), np.zeros(engine.c)
    engine.passes += 1
    for _start, piece in engine.pieces():
        log_p = log_softmax(xp, engine.load(piece, xp.float64, shift) * beta - b_x)
        block_top = engine.numpy(xp.max(log_p, axis=0))
        new_top = np.maximum(top, block_top)
        total = total * np.exp(top - new_top) + engine.numpy(
            xp.sum(xp.exp(log_p - engine.vector(new_top, xp.float64)), axis=0))
        top = new_top
    return np.log(total) + top - math.log(engine.n)


