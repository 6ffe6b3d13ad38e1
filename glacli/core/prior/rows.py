"""How a pass of the prior solver goes over the rows: a :class:`~glacli.base.chunking.LogitSource` in
cache-sized pieces, in its blocks' array namespace (numpy on a CPU, torch on a GPU), summing what each
piece gives. One thread pool does all the concurrency: ``min(4, cpus)`` pieces at once on a CPU, the
next block read meanwhile; BLAS runs on one thread (its own threads beside the pool's oversubscribe
the cores and stall when another process takes one: 2-3x the time on a 2-core machine, one core busy).
"""
from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace
from array_api_compat import device as device_of
from threadpoolctl import ThreadpoolController

from glacli.base import chunking
from glacli.base.chunking import LogitSource


class Rows:
    """Passes over a :class:`LogitSource`. Use as a context manager (it owns the thread pool)."""

    def __init__(self, source: LogitSource):
        self.source, self.n, self.c, self.passes = source, source.n_rows, source.n_classes, 0
        like = source.like if source.like is not None else next(iter(source.blocks()))
        # numpy 2.1+ is itself an array-API namespace: its wrapper would only add start-up time
        self.xp = np if isinstance(like, np.ndarray) and hasattr(np, "astype") else array_namespace(like)
        self.device = "cpu" if self.xp is np else device_of(like)
        self.on_numpy = is_numpy_namespace(self.xp)
        self.cpu = self.on_numpy or str(self.device) == "cpu"
        self.workers = min(4, os.cpu_count() or 1) if self.cpu else 1
        self._pool = ThreadPoolExecutor(self.workers + 1)
        self._local = threading.local()
        self._blas = ThreadpoolController().limit(limits=1, user_api="blas")

    def __enter__(self) -> Rows:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._blas.restore_original_limits()

    def vector(self, values: np.ndarray, dtype: Any) -> Any:
        return self.xp.asarray(np.asarray(values), dtype=dtype, device=self.device)

    def numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value.cpu() if hasattr(value, "cpu") else value, dtype=np.float64)

    def scratch(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """A per-thread buffer (numpy), reused by every piece of that shape."""
        buffers = self._local.__dict__.setdefault("buffers", {})
        key = (name, shape, np.dtype(dtype))
        if key not in buffers:
            buffers[key] = np.empty(shape, dtype)
        return buffers[key]

    def pieces(self) -> Iterator[tuple[int, Any]]:
        """``(first row, piece)`` of the rows in order, cache-sized on a CPU; the next block is read ahead."""
        start, step = 0, chunking.cache_rows(self.c) if self.cpu else None
        blocks, end = iter(self.source.blocks()), object()
        ahead = self._pool.submit(next, blocks, end)
        while (block := ahead.result()) is not end:
            ahead = self._pool.submit(next, blocks, end)
            block = self.xp.asarray(block, device=self.device)
            for offset in range(0, block.shape[0], step or block.shape[0]):
                yield start + offset, block[offset:offset + (step or block.shape[0])]
            start += block.shape[0]

    def reduce(self, fn: Callable[..., tuple], items: Iterable[tuple] | None = None) -> list:
        """One pass: the sums over pieces (or ``items``) of the tuples ``fn(start, piece)`` returns,
        several pieces at once on a CPU, a bounded number in flight (a file is never read ahead whole)."""
        self.passes += 1
        total, pending = None, []
        for item in itertools.chain(self.pieces() if items is None else items, [None]):
            if item is not None:
                pending.append(self._pool.submit(fn, *item))
            while pending and (item is None or len(pending) > 2 * self.workers):
                parts = pending.pop(0).result()
                total = list(parts) if total is None else [a + b for a, b in zip(total, parts)]
        return total
