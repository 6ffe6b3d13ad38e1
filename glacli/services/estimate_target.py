"""``estimate-target``: the label distribution ``pi_t`` of an unlabelled logits file (label shift).

The math is :mod:`glacli.core.label_shift`; this module owns what surrounds it: which logits may be
given (calibrated for a uniform prior; the ensemble is refused since its implied prior is not
uniform), the optional bias-corrected temperature scaling on labelled validation logits, whether
the probabilities are held in memory or recomputed from the file on every pass, and the
prior-kind file that ``combine --target-prior`` and ``evaluate --target-prior`` read, and the warnings
that an estimate is not to be trusted (:func:`estimate_warnings`).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from glacli import api
from glacli.base.errors import GlaInputError
from glacli.core.label_shift import (
    DEFAULT_CONCENTRATION,
    DEFAULT_TOL,
    TARGET_METHODS,
    TargetEstimate,
)
from glacli.base.types import Prior, Reporter
from glacli.base.chunking import LogitSource
from glacli.base.validation import (
    check_same_classnames,
    check_same_temperature,
    require_choice,
    require_count,
    require_every_class,
    require_positive,
)
from glacli.io.outputs import check_output_path
from glacli.io.paramfile import write_prior
from glacli.io.rowfile import RowFile, read_rows

METHODS = TARGET_METHODS
DEFAULT_MEMORY_GIB = 4.0
RARE_SHARE = 0.01
"""A class is estimated as rare below min(RARE_SHARE, a tenth of uniform)."""
MIN_SKILL = 0.1
"""Validation mean per-class accuracy below chance + MIN_SKILL x (1 - chance) counts as near chance."""
Scores = Callable[[np.ndarray], np.ndarray]
"""Stored logits block -> scores calibrated for a uniform prior."""


def estimate_target_file(logits: Path, output: Path, *, method: str = "mlls", val: Path | None = None,
                         calibrate: Path | None = None, concentration: float = DEFAULT_CONCENTRATION,
                         tol: float = DEFAULT_TOL, max_iter: int = 10000, memory_gib: float = DEFAULT_MEMORY_GIB,
                         reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Estimate ``pi_t`` of ``logits`` (MLLS, or BBSE with ``val``) and write it as a prior-kind file.

    ``calibrate`` is labelled validation logits of the same model: a temperature and class biases
    are fitted on them by maximum likelihood first (BCTS), and the test scores become
    ``z / T - log q``, calibrated for a uniform prior whatever the validation proportions.
    Returns the report of ``gla estimate-target --json``.
    """
    require_choice(method, METHODS, "--method")
    if method == "bbse" and val is None:
        raise GlaInputError("--method bbse needs --val: labelled validation logits of the same model")
    if method == "mlls" and val is not None:
        raise GlaInputError("--val is BBSE's confusion-matrix set: give --method bbse, or drop --val")
    if not concentration >= 0 or not math.isfinite(concentration):
        raise GlaInputError(f"--concentration must be a number >= 0, got {concentration}")
    require_positive(tol, "--tol")
    require_count(max_iter, "--max-iter")
    memory_bytes = require_positive(memory_gib, "--memory") * 2**30
    check_output_path(output)
    with contextlib.ExitStack() as files:
        rows = files.enter_context(read_rows(logits, "logits"))
        if rows.n_rows < rows.n_classes:
            raise GlaInputError(f"has {rows.n_rows} rows for {rows.n_classes} classes: too few to estimate "
                                "their proportions", logits)
        if rows.attrs.get("combine_method") == "ensemble":
            raise GlaInputError("is an ensemble's logits: its implied prior is not uniform, so no label shift "
                                "estimate holds; give the debiased zero-shot model, a balanced probe or a "
                                "calibrated GLA output", logits)
        scores, calibration = _scores(rows, calibrate, reporter)
        val_accuracy = calibration["val_mean_per_class"] if calibration else None
        if method == "mlls":
            estimate = api.estimate_target(_scored(rows, scores, memory_bytes, reporter), concentration=concentration,
                                           tol=tol, max_iter=max_iter, memory_gib=memory_gib)
        else:
            estimate, bbse_val_accuracy = _bbse(rows, files.enter_context(read_rows(val, "logits")), scores)
            val_accuracy = bbse_val_accuracy if val_accuracy is None else val_accuracy
        if not estimate.converged:
            reporter.warning(f"MLLS stopped after {estimate.iterations} iterations with KKT gap "
                             f"{estimate.kkt_gap:.2e} > {tol:g}: raise --max-iter")
        parents = [rows.gla_id] + ([calibration["gla_id"]] if calibration else [])
        attrs = {"source": rows.path, "n_rows": rows.n_rows,
                 "concentration": concentration if method == "mlls" else None,
                 "log_likelihood": estimate.log_likelihood,
                 "calibrated_on": calibration["path"] if calibration else None,
                 "confusion_set": str(val) if val is not None else None}
        write_prior(output, Prior(
            prior=np.exp(estimate.log_prior), log_prior=estimate.log_prior, classnames=rows.classnames,
            temperature=1.0, method=estimate.method, converged=estimate.converged,
            max_moment_gap=estimate.kkt_gap, iterations=estimate.iterations,
            attrs={k: v for k, v in attrs.items() if v is not None}), parents)
        if rows.has_labels:
            reporter.message(f"the labels in {rows.path} were ignored by the estimate (evaluate --target-prior "
                             "compares them with it)")
    warnings = estimate_warnings(estimate, rows.n_rows, val_accuracy, calibrate or val)
    for warning in warnings:
        reporter.warning(warning)
    report = _report(estimate, rows.classnames, rows.n_rows, output, calibration)
    report.update(val_mean_per_class=val_accuracy, warnings=warnings)
    return report


def estimate_warnings(estimate: TargetEstimate, n_rows: int, val_accuracy: float | None,
                      val_path: Path | None) -> list[str]:
    """What says an estimate of ``pi_t`` is not to be trusted, one line each: a BBSE system that its
    solution does not satisfy beyond sampling noise, most classes estimated as nearly absent, a model
    near chance on its labelled validation set (then any ``pi_t`` mostly reflects its errors)."""
    n_classes = len(estimate.prior)
    warnings = []
    residual_bound = max(0.05, 1.5 / math.sqrt(n_rows))  # 3 standard errors of a predicted share near 1/2
    if estimate.method == "bbse" and estimate.kkt_gap > residual_bound:
        warnings.append(f"the BBSE system is far from solved (residual {estimate.kkt_gap:.3g} > {residual_bound:.3g}"
                        "): the predicted class shares are not those of any label shift of the validation set; "
                        "the test set differs otherwise (or the confusion matrix is noisy); prefer --method mlls")
    rare_share = min(RARE_SHARE, 0.1 / n_classes)
    rare = int((estimate.prior < rare_share).sum())
    if rare > n_classes / 2:
        warnings.append(f"the estimate puts less than {100 * rare_share:.3g}% on {rare} of the {n_classes} classes: "
                        "adapting to it all but stops predicting them (docs/label-shift.md)")
    chance = 1.0 / n_classes
    if val_accuracy is not None and val_accuracy < chance + MIN_SKILL * (1 - chance):
        warnings.append(f"on {val_path} the model's mean per-class accuracy is {100 * val_accuracy:.2f}%, "
                        f"near chance ({100 * chance:.2f}%): its predictions say little about the classes, so the "
                        "estimate mostly reflects its errors")
    return warnings


def _mean_per_class(predictions: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Mean over the classes present of the share of their rows predicted right."""
    counts = np.bincount(labels, minlength=n_classes)
    right = np.bincount(labels[predictions == labels], minlength=n_classes)
    present = counts > 0
    return float((right[present] / counts[present]).mean())


def _scores(rows: RowFile, calibrate: Path | None, reporter: Reporter) -> tuple[Scores, dict[str, Any] | None]:
    """The map from stored logits to uniform-prior scores: identity, or BCTS fitted on ``calibrate``."""
    if calibrate is None:
        return (lambda values: values), None
    with read_rows(calibrate, "logits") as val:
        check_same_classnames(val.classnames, calibrate, rows.classnames, rows.path)
        labels = val.require_labels("for --calibrate")
        require_every_class(labels, val.classnames, calibrate, "BCTS fits one bias per class")
        source = LogitSource(lambda: (chunk.values for chunk in val.iter_chunks()), val.n_rows, val.n_classes)
        try:
            fit = api.estimate_prior(source, labels, temperature="nll")
        except ValueError as exc:
            raise GlaInputError(str(exc), calibrate) from None
        if not fit.converged:
            raise GlaInputError(f"BCTS did not converge in {fit.iterations} iterations (T went to "
                                f"{fit.temperature:.3g}); the validation logits pin it down poorly", calibrate)
        val_temperature, val_id = val.temperature, val.gla_id
        # The validation rows at their own scale: the argmax of z/T - log q is the calibrated model's prediction.
        predictions = np.concatenate([(c.values.astype(np.float64) / fit.temperature - fit.log_prior).argmax(1)
                                      for c in val.iter_chunks()])
    # Test values at the validation file's scale (raw = values x temperature), then z/T - log q.
    scale = rows.temperature / val_temperature / fit.temperature
    log_q = fit.log_prior

    def calibrated(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float64) * scale - log_q

    return calibrated, {"path": str(calibrate), "gla_id": val_id, "temperature": fit.temperature,
                        "val_rows": len(labels),
                        "val_mean_per_class": _mean_per_class(predictions, labels, len(log_q))}


def _scored(rows: RowFile, scores: Scores, memory_bytes: float = math.inf,
            reporter: Reporter = Reporter()) -> LogitSource:
    """The file's uniform-prior scores, block by block on every pass: MLLS holds their
    probabilities when float64 fits ``memory_bytes``, else every pass reads the file again."""
    if rows.n_rows * rows.n_classes * 8 > memory_bytes:
        reporter.message(f"{rows.n_rows} x {rows.n_classes} probabilities exceed --memory: "
                         "every pass reads the file")
    return LogitSource(lambda: (scores(chunk.values) for chunk in rows.iter_chunks()), rows.n_rows, rows.n_classes)


def _bbse(rows: RowFile, val: RowFile, scores: Scores) -> tuple[TargetEstimate, float]:
    """BBSE from the hard predictions of the test rows and the labelled validation rows; also the mean
    per-class accuracy of those validation predictions."""
    check_same_classnames(val.classnames, val.path, rows.classnames, rows.path)
    labels = val.require_labels("for --method bbse")
    require_every_class(labels, val.classnames, val.path, "its column of the confusion matrix is undefined")
    check_same_temperature(val.temperature, val.path, rows.temperature, rows.path,
                           "BBSE needs the same model at the same scale")
    try:
        estimate = api.estimate_target(_scored(rows, scores), method="bbse", val=(_scored(val, scores), labels))
    except ValueError as exc:
        raise GlaInputError(str(exc), val.path) from None
    val_predictions = np.concatenate([scores(c.values).argmax(1) for c in val.iter_chunks()])
    return estimate, _mean_per_class(val_predictions, labels, rows.n_classes)


def _report(estimate: TargetEstimate, classnames: list[str], n_rows: int, output: Path,
            calibration: dict[str, Any] | None) -> dict[str, Any]:
    uniform = 1.0 / len(classnames)
    order = np.argsort(-estimate.prior, kind="stable")
    return {"output": str(output), "method": estimate.method, "n_rows": n_rows, "n_classes": len(classnames),
            "iterations": estimate.iterations, "kkt_gap": estimate.kkt_gap, "converged": estimate.converged,
            "log_likelihood": estimate.log_likelihood,
            "l1_from_uniform": float(np.abs(estimate.prior - uniform).sum()),
            "imbalance": float(estimate.prior.max() / max(estimate.prior.min(), 1e-300)),
            "calibration": calibration and {k: v for k, v in calibration.items() if k != "gla_id"},
            "prior": {classnames[k]: float(estimate.prior[k]) for k in order}}
