"""Paired percentile bootstrap of the metrics over test rows (pure numpy; no I/O).

A resample is a vector of row counts ``w`` (row ``i`` drawn ``w_i`` times, ``sum w = N``); every
metric of a resample is the metric of the reweighted sums of :class:`glacli.core.metrics.Sums`, so
resampling touches only the per-row values (:class:`glacli.core.metrics.RowValues`, computed once
while the logits stream), never the ``[N, C]`` logits. Count vectors are made ``block`` at a
time, ``W [b, N]``; per block and method that is a few passes over ``b x N`` numbers:
``np.bincount`` of the labels and of the ECE-bin indices (offset by ``r x C`` or ``r x bins``
for resample ``r``, so one call serves the block) weighted by ``W``, ``W x correct`` and
``W x confidence``, and two ``einsum`` row sums (top-k, NLL). These are deliberately not one BLAS
matrix product ``W @ [N, 47]``: on a busy machine a multithreaded BLAS was measured up to 50
times slower at that skinny product than one thread, while bincount's cost does not depend on
the load of other cores. Memory is O(block x N) whatever the number of resamples.

Every method sees the same resamples (paired), so the difference of two methods is resampled
too. ``stratified`` draws each class's rows from that class only (class counts are those of the
test set in every resample, as for a test set built with a fixed number of images per class);
otherwise rows are drawn from all N. Resample ``r`` is drawn from its own generator, spawned
from ``seed``, so results do not depend on the block size.

Intervals are percentile intervals: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
quantiles of the resampled values (linear interpolation), over the resamples where the value is
defined (a plain resample can leave a group without samples).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from glacli.core.metrics import RowValues, Sums, group_values, scalars


@dataclass
class Design:
    """The class of each test row, and for stratified draws the rows of each class: ``order`` sorts
    the rows by class, and slot ``j`` of that order belongs to a class of ``slot_size[j]`` rows
    starting at ``slot_start[j]``."""

    labels: np.ndarray
    n_classes: int
    order: np.ndarray
    slot_start: np.ndarray
    slot_size: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray, n_classes: int) -> Design:
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=n_classes)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return cls(labels, n_classes, np.argsort(labels, kind="stable"), np.repeat(starts, counts),
                   np.repeat(counts, counts))

    @property
    def n_rows(self) -> int:
        return len(self.labels)


def resample_counts(design: Design, first: int, stop: int, seed: int, stratified: bool) -> np.ndarray:
    """``W [stop - first, N]``: the row counts of resamples ``first .. stop - 1``.

    Resample ``r`` uses its own generator, the ``r``-th child of ``SeedSequence(seed)`` (the same
    values whatever the blocks); stratified, slot ``j`` of the class-sorted rows draws uniformly
    among the rows of its own class (``floor(u x size)``, ``u`` uniform in [0, 1)).
    """
    n = design.n_rows
    counts = np.empty((stop - first, n))
    for i, r in enumerate(range(first, stop)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(r,)))
        if stratified:
            offset = (rng.random(n) * design.slot_size).astype(np.int64)
            rows = design.order[design.slot_start + offset]
        else:
            rows = rng.integers(0, n, n)
        counts[i] = np.bincount(rows, minlength=n)
    return counts


def weighted_sums(rows: RowValues, design: Design, counts: np.ndarray, n_bins: int,
                  class_count: np.ndarray | None = None) -> Sums:
    """The metric sums of ``rows`` with row ``i`` counted ``counts[r, i]`` times in resample ``r``.

    ``class_count`` (:func:`class_counts` of ``counts``) does not depend on the method: pass it to
    share it between the methods of one block.
    """
    w_correct = counts * rows.correct
    bins = _offset_keys(rows.bin, n_bins, len(counts))
    per_bin = lambda weights: _bincount(bins, weights, len(counts), n_bins)
    return Sums(class_correct=_bincount(_offset_keys(design.labels, design.n_classes, len(counts)), w_correct,
                                        len(counts), design.n_classes),
                class_count=class_counts(design, counts) if class_count is None else class_count,
                topk_correct=np.einsum("bn,n->b", counts, rows.in_top_k.astype(np.float64)),
                nll=np.einsum("bn,n->b", counts, rows.nll),  # einsum: no BLAS threads (see above)
                bin_count=per_bin(counts), bin_correct=per_bin(w_correct),
                bin_confidence=per_bin(counts * rows.confidence))


def class_counts(design: Design, counts: np.ndarray) -> np.ndarray:
    """``[b, C]`` rows per class in each resample."""
    return _bincount(_offset_keys(design.labels, design.n_classes, len(counts)), counts, len(counts),
                     design.n_classes)


def _offset_keys(index: np.ndarray, size: int, b: int) -> np.ndarray:
    """``index + size x r`` for resample ``r``: one bincount then sums every resample at once."""
    return (index[None, :] + size * np.arange(b)[:, None]).ravel()


def _bincount(keys: np.ndarray, weights: np.ndarray, b: int, size: int) -> np.ndarray:
    return np.bincount(keys, weights=weights.ravel(), minlength=b * size).reshape(b, size)


def resampled_metrics(methods: Sequence[RowValues], labels: np.ndarray, n_classes: int, k: int, n_bins: int,
                      groups: dict[str, np.ndarray], n_resamples: int, seed: int, stratified: bool,
                      block: int, advance: Callable[[int], None] = lambda n: None) -> list[dict[str, np.ndarray]]:
    """Every metric (keys as :func:`glacli.core.metrics.summarise`) of every method on the same
    ``n_resamples`` resamples: one ``[n_resamples]`` array per metric and method. ``block``
    resamples are held at a time; ``advance`` is told how many are done after each block."""
    design = Design.of(labels, n_classes)
    draws: list[dict[str, list[np.ndarray]]] = [{} for _ in methods]
    block = max(1, block)
    for first in range(0, n_resamples, block):
        stop = min(first + block, n_resamples)
        counts = resample_counts(design, first, stop, seed, stratified)
        class_count = class_counts(design, counts)
        for rows, out in zip(methods, draws):
            sums = weighted_sums(rows, design, counts, n_bins, class_count)
            values = scalars(sums, k) | group_values(sums.class_correct, sums.class_count, groups)
            for key, value in values.items():
                out.setdefault(key, []).append(value)
        advance(stop - first)
    return [{key: np.concatenate(parts) for key, parts in out.items()} for out in draws]


def percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of ``draws`` at ``confidence`` (NaN, NaN where no draw is defined)."""
    defined = draws[np.isfinite(draws)]
    if not len(defined):
        return float("nan"), float("nan")
    low, high = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def intervals(draws: dict[str, np.ndarray], confidence: float) -> dict[str, tuple[float, float]]:
    """The percentile interval of each metric's draws."""
    return {key: percentile_interval(values, confidence) for key, values in draws.items()}


def paired_intervals(draws: dict[str, np.ndarray], baseline: dict[str, np.ndarray], confidence: float
                     ) -> dict[str, tuple[float, float]]:
    """The percentile interval of ``method - baseline`` per metric, resample by resample."""
    return {key: percentile_interval(values - baseline[key], confidence) for key, values in draws.items()}
