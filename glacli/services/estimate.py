"""``estimate-prior``: the label prior q of a zero-shot model (and its temperature), from logits files.

The estimate is :func:`glacli.api.estimate_prior` (the solver: :mod:`glacli.core.prior`); this
module owns what surrounds it: several files pooled at one scale, the class proportions ``f`` of
the estimation set (its labels, uniform, or a file), where the rows live during the fit (the solver keeps one float32 array of
exponentials when it fits ``--memory``, else every pass streams the files), the device (on a CPU
the solver runs on numpy and torch is never imported, so the command starts as fast as those
without a model), what the prior file records, and the report (entropy of q, top-1 before and
after on the estimation set).
"""
from __future__ import annotations

import contextlib
import math
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glacli import api
from glacli.base import chunking
from glacli.base.devices import compute_device
from glacli.base.errors import GlaInputError
from glacli.base.types import Prior, PriorEstimate, Reporter
from glacli.core.calibration import T_MIN
from glacli.core.prior import DEFAULT_TOL, LogitSource, class_proportions
from glacli.base.validation import (
    check_same_classnames,
    labels_complete,
    require_count,
    require_every_class,
    require_labels,
    require_positive,
)
from glacli.io import fitted_ids
from glacli.io.outputs import check_output_path
from glacli.io.paramfile import write_prior
from glacli.io.rowfile import RowFile, read_rows

TEMPERATURE_METHODS = ("nll", "confidence")
TARGETS = ("labels", "uniform")
"""The ``--target`` values that name no file."""
DEFAULT_MEMORY_GIB = 8.0
HEAD_ATTRS = {"head_id": "zeroshot_head_id", "model": "zeroshot_model", "pretrained": "zeroshot_pretrained",
              "templates": "zeroshot_templates"}
"""Logits attribute -> prior attribute naming the zero-shot head that q belongs to."""


def estimate_prior_file(logits: Sequence[Path], output: Path, *, temperature: str | float = "nll",
                        target: str = "labels", tol: float = DEFAULT_TOL, max_iter: int = 100,
                        device: str = "auto", memory_gib: float = DEFAULT_MEMORY_GIB, show: int = 5,
                        reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Fit q (``temperature``: ``nll`` jointly with T, ``confidence`` after T, or a fixed T) on the
    pooled ``logits`` and write the prior file; returns the report of ``gla estimate-prior --json``.

    ``target`` gives the class proportions of the estimation set: ``labels``, ``uniform`` or a file.
    """
    _check_options(temperature, target, tol, max_iter, memory_gib, show)
    check_output_path(output)
    compute = compute_device(device)
    with contextlib.ExitStack() as files:
        rows = _open_pooled(logits, files, compute, reporter)
        proportions = _target_proportions(target, rows)
        if temperature in TEMPERATURE_METHODS:
            require_labels(rows.labels, rows.path, f"for --temperature {temperature}")
        labels = rows.first_read.labels
        budget = memory_gib * 2**30 * (0.5 if compute != "cpu" else 1.0)
        held = None
        if 8.0 * rows.n_rows * len(rows.classnames) <= budget:
            held = np.empty((rows.n_rows, len(rows.classnames)), np.float32)
        try:
            fit = api.estimate_prior(rows.source if held is None else _held_source(rows, held, compute), labels,
                                     temperature=temperature, proportions=None if target == "labels" else proportions,
                                     tol=tol, max_iter=max_iter,
                                     memory_gib=(budget if held is None else budget - held.nbytes) / 2**30).estimate
        except ValueError as exc:
            raise GlaInputError(str(exc), rows.path) from None
        method = temperature if isinstance(temperature, str) else "fixed"
        fitted, correct = _after_fit(rows, held, fit)
        report = _report(rows, labels, proportions, fit, correct, method, output, show)
    if method == "nll" and (not fit.converged or fit.temperature <= T_MIN * 1.0001):
        why = ("the logits carry almost no information about these labels" if fit.temperature > 1 else
               "with q free, the logits separate the labels, which is common on a few dozen rows")
        raise GlaInputError(f"--temperature nll has no finite optimum here (T went to {fit.temperature:.3g} in "
                            f"{fit.iterations} iterations): {why}; give a fixed --temperature", rows.path)
    attrs = {"target": target if target in TARGETS else str(Path(target)),
             "objective": fit.objective, "temperature_gradient": fit.temperature_gradient,
             "n_rows": rows.n_rows, "source": rows.path, **rows.head_attrs}
    write_prior(output, Prior(
        prior=np.exp(fit.log_prior), log_prior=fit.log_prior, classnames=rows.classnames,
        temperature=fit.temperature, method=method, converged=fit.converged, max_moment_gap=fit.max_moment_gap,
        iterations=fit.iterations, logits_temperature=rows.temperature, attrs=attrs), rows.parents,
        datasets={fitted_ids.DATASET: fitted})
    if not fit.converged:
        reporter.warning(_not_converged(fit, rows.classnames, tol))
    if labels is not None and report["top1_after"] < report["top1_before"] \
            and report["mean_per_class_after"] < report["mean_per_class_before"]:
        reporter.warning(_debiasing_hurts(report, rows.path))
    return report


def _debiasing_hurts(report: dict[str, Any], path: str) -> str:
    """Debiasing lowered both accuracies on the very rows q was fitted to: q does not describe a bias
    that removing it corrects (a model near chance on most classes, or logits of another kind)."""
    return (f"on {path} itself, debiasing lowers top-1 ({report['top1_before']:.2f} -> {report['top1_after']:.2f}) "
            f"and mean per-class accuracy ({report['mean_per_class_before']:.2f} -> "
            f"{report['mean_per_class_after']:.2f}): this q does not correct the model here; check the logits "
            "before using it (docs/label-shift.md)")


def _check_options(temperature: str | float, target: str, tol: float, max_iter: int, memory_gib: float,
                   show: int) -> None:
    """Refuse option values and combinations that cannot give an estimate, before any file is read."""
    if temperature not in TEMPERATURE_METHODS:
        require_positive(temperature, "--temperature")
    require_positive(tol, "--tol")
    require_count(max_iter, "--max-iter")
    require_positive(memory_gib, "--memory")
    require_count(show, "--show", minimum=0)
    if target != "labels" and temperature == "nll":
        raise GlaInputError(f"--temperature nll fits T to the labels, so it needs --target labels; with --target "
                            f"{target} give a number, e.g. --temperature 1")
    if target not in TARGETS and not Path(target).exists():
        raise GlaInputError("no such file (--target is labels, uniform or a file of class proportions)", target)


def _not_converged(fit: PriorEstimate, classnames: list[str], tol: float) -> str:
    """Which classes the rows pin down poorly, and what to do about it."""
    gaps = np.abs(fit.moment_gaps)
    worst = [k for k in np.argsort(-gaps, kind="stable")[:3] if gaps[k] > tol]
    named = ", ".join(f"{classnames[k]!r} ({gaps[k]:.1e})" for k in worst)
    return (f"not converged after {fit.iterations} iterations (max moment gap {fit.max_moment_gap:.2e} > {tol:g}); "
            f"the rows pin q down poorly for {named}: at T = {fit.temperature:.4g} their probabilities are nearly "
            "0 or 1 on every row. Fit T (--temperature nll) or raise --max-iter")


@dataclass
class _PooledRows:
    """One or more open logits files, streamed block by block on every pass of the solver."""

    path: str
    files: list[RowFile]
    scales: list[float]
    """What each file's values are multiplied by (1, or its temperature to pool at the raw scale)."""
    labels: np.ndarray
    classnames: list[str]
    parents: list[str]
    temperature: float
    """The temperature applied to the pooled values: the inputs' own, or 1 where they differed (raw scale)."""
    head_attrs: dict[str, str]
    """Which zero-shot head produced the logits (``zeroshot_head_id``, model, templates), where known."""
    source: LogitSource
    first_read: _FirstRead

    @property
    def n_rows(self) -> int:
        return len(self.labels)

    def blocks(self, device: str = "cpu") -> Iterator[Any]:
        """Float32 blocks of every file in order, scaled, as numpy (CPU) or torch tensors (``device``);
        the first pass to read a block also gives it to :attr:`first_read`."""
        offset = 0
        for rows, scale in zip(self.files, self.scales):
            for chunk in rows.iter_chunks(with_ids=not self.first_read.complete):
                self.first_read.add(offset + chunk.start, chunk.values, chunk.ids)
                values = chunk.values if scale == 1.0 else chunk.values * np.float32(scale)
                if device == "cpu":
                    yield values
                else:
                    import torch  # a GPU was asked for: torch is needed, and only then
                    yield torch.from_numpy(values).to(device)
            offset += rows.n_rows


@dataclass
class _FirstRead:
    """What needs no fit, taken from each block as the solver's first pass reads it (the files are read
    once where the rows are held): the rows' hashes (:mod:`glacli.io.fitted_ids`) and, with labels,
    the right top-1 predictions of ``z`` per class."""

    n_rows: int
    n_classes: int
    labels: np.ndarray | None
    """Every row's label, or None where some row has none (no accuracy is reported then)."""
    pool: ThreadPoolExecutor
    """Where each block's work runs, beside the solver (which waits for its reading, not for this)."""
    parts: dict[int, Future] = field(default_factory=dict)
    rows: int = 0

    @property
    def complete(self) -> bool:
        return self.rows == self.n_rows

    def add(self, start: int, z: np.ndarray, ids: list[str] | None) -> None:
        if ids is None or start in self.parts:
            return
        if self.parts:  # one block in work at a time: a streamed file is never held whole
            list(self.parts.values())[-1].result()
        self.parts[start] = self.pool.submit(self._summarise, start, z, ids)
        self.rows += len(z)

    def _summarise(self, start: int, z: np.ndarray, ids: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        right = None if self.labels is None else _right_per_class(z, self.labels[start:start + len(z)],
                                                                  self.n_classes)
        return fitted_ids.row_hashes(ids, z), right

    def results(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The sorted distinct row hashes and, with labels, [C] right predictions of ``z``."""
        parts = [future.result() for future in self.parts.values()]
        right = None if self.labels is None else sum(counts for _, counts in parts)
        return np.unique(np.concatenate([hashes for hashes, _ in parts])), right


def _right_per_class(scores: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[C] how many rows of each class ``scores`` predict right (top-1)."""
    return np.bincount(labels, weights=scores.argmax(1) == labels, minlength=n_classes)


def _open_pooled(paths: Sequence[Path], files: contextlib.ExitStack, device: str, reporter: Reporter) -> _PooledRows:
    """Every input, at one scale: their common temperature, or the raw scale where they differ."""
    opened, heads = [], []
    for path in paths:
        logits_file = files.enter_context(read_rows(path, "logits"))
        if logits_file.attrs.get("head_type", "zeroshot") != "zeroshot":
            reporter.warning(f"{path} comes from a '{logits_file.attrs['head_type']}' head; "
                             "q describes the model whose logits you give")
        if opened:
            check_same_classnames(logits_file.classnames, path, opened[0].classnames, paths[0])
        if logits_file.n_rows == 0:
            raise GlaInputError("has no rows", path)
        opened.append(logits_file)
        heads.append({HEAD_ATTRS[k]: str(v) for k, v in logits_file.attrs.items() if k in HEAD_ATTRS})
    temperatures = [f.temperature for f in opened]
    temperature, scales = temperatures[0], [1.0] * len(opened)
    if any(not math.isclose(t, temperature, rel_tol=1e-9) for t in temperatures):
        listed = ", ".join(f"{path} x {t:g}" for path, t in zip(paths, temperatures))
        reporter.message(f"inputs had different temperatures applied; pooled at the raw scale ({listed})")
        temperature, scales = 1.0, temperatures
    head_ids = {h.get("zeroshot_head_id") for h in heads} - {None}
    if len(head_ids) > 1:
        reporter.warning(f"the inputs come from {len(head_ids)} different zero-shot heads; q describes their mixture")
    labels, n_classes = np.concatenate([f.labels for f in opened]), opened[0].n_classes
    pooled = _PooledRows(" + ".join(map(str, paths)), opened, scales, labels, opened[0].classnames,
                         [f.gla_id for f in opened], temperature, heads[0] if len(head_ids) <= 1 else {},
                         LogitSource(lambda: None, len(labels), n_classes),
                         _FirstRead(len(labels), n_classes, labels if labels_complete(labels) else None,
                                    files.enter_context(ThreadPoolExecutor(1))))
    pooled.source.blocks = lambda: pooled.blocks(device)
    pooled.source.like = next(iter(pooled.blocks(device)))[:0] if device != "cpu" else np.empty((0, 0), np.float32)
    return pooled


def _target_proportions(target: str, rows: _PooledRows) -> np.ndarray:
    """The class proportions ``f`` that ``--target`` names."""
    n_classes = len(rows.classnames)
    if target == "labels":
        labels = require_labels(rows.labels, rows.path,
                                "for --target labels (use --target uniform for a balanced unlabelled set)")
        require_every_class(labels, rows.classnames, rows.path,
                            "--target labels needs every class (q is undefined for an absent class)")
        return class_proportions(labels, n_classes)
    if target == "uniform":
        return np.full(n_classes, 1.0 / n_classes)
    # imported here: only a file needs the readers of every format
    from glacli.io.formats.proportions import read_proportions
    return read_proportions(Path(target), rows.classnames)


def _report(rows: _PooledRows, labels: np.ndarray | None, proportions: np.ndarray, fit: PriorEstimate,
            correct: np.ndarray | None, method: str, output: Path, show: int) -> dict[str, Any]:
    """What ``gla estimate-prior`` prints: the fit, the shape of q, and (with labels) top-1 before and after."""
    log_q = fit.log_prior
    q = np.exp(log_q)
    order = np.argsort(-log_q, kind="stable")
    classnames = rows.classnames
    report = {
        "input": rows.path, "output": str(output), "n_rows": rows.n_rows, "n_classes": len(classnames),
        "temperature": fit.temperature, "temperature_method": method, "logits_temperature": rows.temperature,
        "iterations": fit.iterations, "passes": fit.passes, "max_moment_gap": fit.max_moment_gap,
        "converged": fit.converged, "objective": fit.objective, "temperature_gradient": fit.temperature_gradient,
        "imbalance": float(proportions.max() / proportions.min()),
        "effective_classes": float(np.exp(-(q * log_q).sum())),
        "most_likely": [{"class": classnames[k], "q": float(q[k]), "log_q": float(log_q[k])} for k in order[:show]],
        "least_likely": [{"class": classnames[k], "q": float(q[k]), "log_q": float(log_q[k])}
                         for k in order[::-1][:show]],
    }
    if labels is not None:
        counts = np.bincount(labels, minlength=len(classnames))
        present = counts > 0
        (top1_before, top1_after), (per_class_before, per_class_after) = (
            correct.sum(1) / len(labels) * 100, (correct[:, present] / counts[present]).mean(1) * 100)
        report.update(top1_before=float(top1_before), top1_after=float(top1_after),
                      mean_per_class_before=float(per_class_before), mean_per_class_after=float(per_class_after))
    return report


def _held_source(rows: _PooledRows, held: np.ndarray, device: str) -> Any:
    """The pooled rows, read once into ``held``: on a CPU its first pass reads the files (the solver's
    read-ahead overlapping its work) and fills ``held``, and every later pass (the solver's, the summary
    after it) reads memory; on a GPU ``held`` is filled first and moved there."""
    n, in_memory = rows.n_rows, LogitSource.from_array(held)
    filled = False

    def blocks() -> Iterator[np.ndarray]:
        nonlocal filled
        if filled:
            yield from in_memory.blocks()
            return
        start = 0
        for block in rows.blocks("cpu"):
            held[start:start + len(block)] = block
            yield held[start:start + len(block)]
            start += len(block)
        filled = start == n  # a pass cut short leaves the rest unread

    if device == "cpu":
        return LogitSource(blocks, n, len(rows.classnames), held[:0])
    import torch  # a GPU was asked for: torch is needed, and only then
    for _ in blocks():
        pass
    return torch.from_numpy(held).to(device)


def _after_fit(rows: _PooledRows, held: np.ndarray | None, fit: PriorEstimate
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """With labels, [2, C] right top-1 predictions per class of ``z`` (from the first read) and of the
    debiased ``z / T - log q``, by one pass over the rows after the fit (the held ones, which the
    solver's first pass filled, else the files), pieces on two threads."""
    first = rows.first_read
    hashes, right = first.results()
    if first.labels is None:
        return hashes, None
    scale, log_q = np.float32(1.0 / fit.temperature), fit.log_prior.astype(np.float32)

    def debiased_right(start: int, z: np.ndarray) -> np.ndarray:
        debiased = (z if scale == 1 else z * scale) - log_q
        return _right_per_class(debiased, first.labels[start:start + len(z)], first.n_classes)

    def pieces() -> Iterator[tuple[int, np.ndarray]]:
        offset, step = 0, chunking.array_rows(first.n_classes)
        for rows_file, file_scale in zip(rows.files, rows.scales):
            for start in range(0, rows_file.n_rows, step):
                stop = min(start + step, rows_file.n_rows)
                z = held[offset + start:offset + stop] if held is not None else rows_file.read(start, stop)
                yield offset + start, z if held is not None or file_scale == 1.0 else z * np.float32(file_scale)
            offset += rows_file.n_rows

    counts, pending = np.zeros(first.n_classes), []
    with ThreadPoolExecutor(2) as pool:
        for item in pieces():  # a few pieces in flight: streamed files are never read ahead whole
            pending.append(pool.submit(debiased_right, *item))
            if len(pending) > 4:
                counts += pending.pop(0).result()
        counts += sum(future.result() for future in pending)
    return hashes, np.stack([right, counts])
