"""The Python API of gla: Generalized Logit Adjustment on arrays (``import glacli as gla``).

Arrays in (numpy; torch tensors where noted), arrays and small records out; no files except
:func:`load` and :func:`save`, no printing, and torch is imported only by :func:`fit_probe`, when
a GPU is asked for or when a tensor is passed. Every input is checked first, with the messages the command line gives
(a :class:`~glacli.base.errors.GlaInputError`, a ``ValueError``, naming the argument at fault).

The commands' services call these same functions, adding only files, streaming, progress and
printing: ``gla estimate-prior`` calls :func:`estimate_prior`, ``gla combine`` :func:`combine` on
each block of rows, ``gla calibrate`` :func:`fit_temperature`, ``gla estimate-target``
:func:`estimate_target` (and :func:`estimate_prior` for its BCTS calibration), ``gla fit``
:func:`fit_probe` and ``gla evaluate`` :func:`evaluate`. docs/api.md is the guide,
docs/architecture.md says where each function lives.

Notation: ``N`` rows, ``C`` classes, ``D`` feature dimensions; ``z`` zero-shot logits, ``q`` the
pre-training label prior, ``T`` a temperature.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.base.types import Head, PathPoint, Prior, PriorEstimate, ProbeResult, Reporter
from glacli.base.validation import (
    check_classnames,
    require_choice,
    require_count,
    require_every_class,
    require_finite,
    require_label_range,
    require_labels,
    require_numeric,
    require_positive,
    require_positive_entries,
    require_prior,
)
from glacli.core.calibration import fit_temperature_confidence, fit_temperature_nll
from glacli.core.combine import ensemble_logits, gla_logits
from glacli.core.label_shift import DEFAULT_CONCENTRATION, TARGET_METHODS, bbse, mlls, probabilities
from glacli.core.label_shift import TargetEstimate as TargetFit
from glacli.core.prior import DEFAULT_TOL, LogitSource, class_proportions
from glacli.core.prior import estimate_prior as _solve_prior

if TYPE_CHECKING:  # torch: only when a probe is fitted
    from glacli.core.anchor import AnchorFit

__all__ = [
    "GlaInputError", "Head", "Prior", "PriorFit", "RowRecord", "TargetFit",
    "combine", "debias", "estimate_prior", "estimate_target", "evaluate", "fit_probe", "fit_temperature",
    "load", "save",
]

TEMPERATURE_METHODS = ("nll", "confidence")
TARGETS = ("labels", "uniform")
COMBINE_METHODS = ("gla", "ensemble")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PriorFit:
    """The label prior ``q`` of a zero-shot model, fitted by :func:`estimate_prior`.

    Attributes:
        log_prior: [C] float64 ``log q``, normalised (``logsumexp = 0``); finite even where ``q``
            underflows.
        temperature: the ``T`` the logits were divided by when ``q`` was fitted (``T_zs``).
        converged: whether the moment gap fell below ``tol`` within ``max_iter`` iterations.
        moment_gap: ``max_k |f_k - mean_i softmax(z_i / T - log q + log f)_k|`` at the solution.
        iterations: Newton iterations.
        objective: mean cross-entropy of ``softmax(z / T - log q + log f)`` on the labels (None
            without labels).
        estimate: the solver's full record (per-class gaps, the temperature gradient).
    """

    log_prior: np.ndarray
    temperature: float
    converged: bool
    moment_gap: float
    iterations: int
    objective: float | None
    estimate: PriorEstimate = field(repr=False, compare=False)

    @property
    def prior(self) -> np.ndarray:
        """[C] float64 ``q = exp(log_prior)``, summing to 1."""
        return np.exp(self.log_prior)


@dataclass
class RowRecord:
    """A features or logits file in memory (what :func:`load` returns for those kinds).

    Attributes:
        kind: ``"features"`` or ``"logits"``.
        values: [N, D] features or [N, C] logits (float32, or float16 features as stored).
        labels: [N] int64 labels, -1 where unknown.
        ids: [N] sample ids.
        classnames: [C] class names.
        temperature: the temperature already applied to logits values (1.0 if none).
        attrs: the file's other attributes (provenance: ``gla_id``, ``parents``, ...).
    """

    kind: str
    values: np.ndarray
    labels: np.ndarray
    ids: list[str]
    classnames: list[str]
    temperature: float = 1.0
    attrs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- input checks


def _is_tensor(values: Any) -> bool:
    return type(values).__module__.startswith("torch")


def _numpy(values: Any) -> np.ndarray:
    """A numpy view of an array or a (CPU or GPU) torch tensor."""
    return np.asarray(values.detach().cpu() if _is_tensor(values) else values)


def _matrix(values: Any, what: str, keep_tensor: bool = False) -> Any:
    """``values`` as a finite numeric [N, C] array with rows (a torch tensor stays one with ``keep_tensor``)."""
    if isinstance(values, RowRecord):
        values = values.values
    if keep_tensor and _is_tensor(values):
        if values.ndim != 2 or not values.is_floating_point():
            raise GlaInputError(f"expected a 2-d float array [N, C], got shape {tuple(values.shape)}", what)
        array = values
    else:
        array = require_numeric(_numpy(values), what, what)
        if array.ndim != 2:
            raise GlaInputError(f"expected a 2-d array [N, C], got shape {array.shape}", what)
        require_finite(array, what, what)
    if array.shape[0] == 0:
        raise GlaInputError("has no rows", what)
    return array


def _labels(labels: Any, n_rows: int, n_classes: int, what: str, purpose: str) -> np.ndarray:
    """[N] int64 labels in ``0..C-1``."""
    array = require_numeric(_numpy(labels), what, what)
    if array.shape != (n_rows,):
        raise GlaInputError(f"expected {n_rows} labels, one per row, got shape {array.shape}", what)
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise GlaInputError("holds non-integer values; labels are class indices", what)
    array = array.astype(np.int64)
    require_label_range(array, n_classes, what)
    return require_labels(array, what, purpose)


def _names(n_classes: int) -> list[str]:
    return [str(k) for k in range(n_classes)]


def _proportions(values: Any, n_classes: int, what: str) -> np.ndarray:
    """Class proportions: one finite positive entry per class, normalised to sum to 1."""
    array = np.asarray(_numpy(values), dtype=np.float64)
    if array.ndim != 1 or len(array) != n_classes:
        raise GlaInputError(f"holds {array.size} proportions for {n_classes} classes", what)
    require_finite(array, what, what)
    require_positive_entries(array, what, what)
    return array / array.sum()


@dataclass(frozen=True)
class _PriorParts:
    log_prior: np.ndarray
    temperature: float | None
    """The T the prior was fitted at, where the record says (a bare array does not)."""
    logits_temperature: float = 1.0


def _prior_parts(prior: Any, n_classes: int, what: str, role: str = "q") -> _PriorParts:
    """``log`` of a prior given as a :class:`PriorFit`, a :class:`Prior` record (from :func:`load`), a
    :class:`TargetFit`, or [C] probabilities summing to 1; ``role`` ``q`` refuses a test label distribution
    and ``pi`` takes any class distribution."""
    if isinstance(prior, PriorFit):
        parts = _PriorParts(prior.log_prior, prior.temperature)
    elif isinstance(prior, Prior):
        if role == "q" and prior.method in TARGET_METHODS:
            raise GlaInputError(f"holds a test label distribution (method {prior.method}, from estimate_target), "
                                "not a pre-training prior q: give it as target_prior", what)
        parts = _PriorParts(prior.log_prior, prior.temperature, prior.logits_temperature)
    elif isinstance(prior, TargetFit):
        if role == "q":
            raise GlaInputError("is a test label distribution (from estimate_target), not a pre-training prior q: "
                                "give it as target_prior", what)
        parts = _PriorParts(prior.log_prior, None)
    else:
        probabilities_ = require_prior(_numpy(prior), what)
        parts = _PriorParts(np.log(probabilities_), None)
    if len(parts.log_prior) != n_classes:
        raise GlaInputError(f"has {len(parts.log_prior)} classes but the logits have {n_classes}", what)
    return parts


# --------------------------------------------------------------------------- the prior


def estimate_prior(logits: Any, labels: Any = None, *, temperature: str | float = "nll",
                   proportions: Any = None, target: str | None = None, tol: float = DEFAULT_TOL,
                   max_iter: int = 100, memory_gib: float | None = None) -> PriorFit:
    """Estimate the pre-training label prior ``q`` of a zero-shot model from its logits.

    On an estimation set with class proportions ``f``, the model with its prior ``q`` replaced
    by ``f`` is ``softmax(z_i / T - log q + log f)``. ``q`` maximises its likelihood,

        log q, T = argmin  mean_i [logsumexp(z_i / T - log q + log f) - (z_i / T - log q + log f)_{y_i}],

    a convex problem in ``(1 / T, log q)`` whose optimum satisfies the moment condition
    ``mean_i softmax(z_i / T - log q + log f) = f``; with ``T`` fixed only ``f`` enters, so a set of
    known proportions needs no labels. Solved exactly by Newton's method (docs/method.md).

    Parameters:
        logits: [N, C] zero-shot logits (numpy, or a torch tensor on any device), finite; or a
            :class:`glacli.core.prior.LogitSource` streaming them.
        labels: [N] class indices. Alone they are enough: ``f`` is their proportions (every class
            needs a row), which corrects for an imbalanced estimation set.
        temperature: ``"nll"`` fits ``T`` jointly with ``q`` (needs labels); ``"confidence"`` picks
            ``T`` so that the mean maximum probability equals top-1 accuracy, then fits ``q``; a
            positive number fixes ``T`` (1: none).
        proportions: [C] class proportions ``f`` of the estimation set (positive; normalised), in
            place of the label proportions.
        target: ``"uniform"`` for a balanced set (no labels needed, with a numeric
            ``temperature``); ``"labels"`` (the default when ``proportions`` is None) for the label
            proportions.
        tol: stop when the moment gap (and, for ``"nll"``, the temperature's gradient) is below this.
        max_iter: Newton iterations at most.
        memory_gib: memory the solver may hold (GiB); beyond it every pass recomputes from the
            rows. None: no limit.

    Returns:
        :class:`PriorFit` with ``log_prior`` and ``prior`` ([C] float64), ``temperature``,
        ``converged``, ``moment_gap``, ``iterations`` and ``objective``.
    """
    source = logits if isinstance(logits, LogitSource) else _matrix(logits, "logits", keep_tensor=True)
    n, c = (source.n_rows, source.n_classes) if isinstance(source, LogitSource) else tuple(source.shape)
    if isinstance(temperature, str):
        require_choice(temperature, TEMPERATURE_METHODS, "temperature")
    else:
        temperature = require_positive(temperature, "temperature")
    require_positive(tol, "tol")
    require_count(max_iter, "max_iter")
    if memory_gib is not None:
        require_positive(memory_gib, "memory_gib")
    if target is not None:
        require_choice(target, TARGETS, "target")
        if proportions is not None:
            raise GlaInputError("give the class proportions as proportions or as target, not both")
    y = None if labels is None else _labels(labels, n, c, "labels", "to estimate q")
    if proportions is not None:
        f = _proportions(proportions, c, "proportions")
    elif target == "uniform":
        f = np.full(c, 1.0 / c)
    else:
        if y is None:
            raise GlaInputError("labels are needed for target 'labels' (give target='uniform' for a balanced "
                                "unlabelled set, or proportions)")
        require_every_class(y, _names(c), "labels", "target 'labels' needs every class (q is undefined for an "
                                                    "absent class)")
        f = class_proportions(y, c)
    if temperature == "nll" and target == "uniform":
        raise GlaInputError("temperature 'nll' fits T to the labels, so it needs target 'labels'; with target "
                            "'uniform' give a number, e.g. temperature=1")
    if temperature in TEMPERATURE_METHODS and y is None:
        raise GlaInputError(f"labels are needed for temperature '{temperature}'")
    hold = math.inf if memory_gib is None else memory_gib * 2**30
    try:
        fit = _solve_prior(source, f, temperature, labels=y, tol=tol, max_iter=max_iter, hold_bytes=hold)
    except GlaInputError:
        raise
    except ValueError as exc:  # what the rows hold (NaN, a perfectly accurate model): the caller names them
        raise GlaInputError(str(exc)) from None
    return PriorFit(fit.log_prior, fit.temperature, fit.converged, fit.max_moment_gap, fit.iterations,
                    fit.objective, fit)


# --------------------------------------------------------------------------- combining


def combine(zeroshot: Any, prior: Any, finetuned: Any = None, *, zeroshot_temperature: float | None = None,
            finetuned_temperature: float = 1.0, source_prior: Any = None, target_prior: Any = None,
            method: str = "gla", alpha: float | None = 0.5) -> np.ndarray:
    """GLA logits, the debiased zero-shot model, or the ensemble baseline.

    With ``T_zs`` = ``zeroshot_temperature`` (default: the ``temperature`` of ``prior``) and
    ``T_ft`` = ``finetuned_temperature`` (the temperature already applied to ``finetuned``):

    - ``method="gla"``: ``ft + zs / T_zs - log q - log(pi_s) / T_ft + log pi_t``; without
      ``finetuned`` the debiased zero-shot model ``zs / T_zs - log q (+ log pi_t)``.
    - ``method="ensemble"``: ``(1 - alpha) zs / T_zs + alpha ft``.

    ``zs`` must be at the scale ``q`` was fitted on: a :class:`RowRecord` divided by the prior's
    ``T_zs`` is brought to it exactly, as ``gla combine`` does (values x the record's temperature /
    the prior's ``logits_temperature``); plain arrays are taken as at that scale, and an explicit
    ``zeroshot_temperature`` divides the values as given.

    Parameters:
        zeroshot: [N, C] zero-shot logits (numpy, torch, or a logits :class:`RowRecord`).
        prior: ``q``: a :class:`PriorFit`, a :class:`Prior` record, or [C] probabilities (then give
            ``zeroshot_temperature``). May be None for ``method="ensemble"`` with ``zeroshot_temperature``.
        finetuned: [N, C] fine-tuned logits as stored (their temperature ``T_ft`` applied), or None.
        zeroshot_temperature: ``T_zs``; overrides the prior's.
        finetuned_temperature: ``T_ft`` (a logits :class:`RowRecord` brings its own).
        source_prior: ``pi_s``, [C] label proportions of the fine-tuned model's training set (or a
            prior record); None: uniform. Needs ``finetuned``.
        target_prior: ``pi_t``, [C] label proportions of the test set (e.g. a :class:`TargetFit`);
            None: uniform. ``method="gla"`` only.
        method: ``"gla"`` or ``"ensemble"``.
        alpha: the ensemble's weight of the fine-tuned model, in [0, 1] (unused by ``"gla"``).

    Returns:
        [N, C] float32 logits.
    """
    require_choice(method, COMBINE_METHODS, "method")
    zs = _matrix(zeroshot, "zeroshot")
    n, c = zs.shape
    ft = None
    if finetuned is not None:
        ft = _matrix(finetuned, "finetuned")
        if ft.shape != zs.shape:
            raise GlaInputError(f"has shape {ft.shape} but zeroshot has {zs.shape}", "finetuned")
        if isinstance(finetuned, RowRecord):
            if finetuned_temperature != 1.0 and not math.isclose(finetuned_temperature, finetuned.temperature):
                raise GlaInputError(f"the record has temperature {finetuned.temperature:g} applied but "
                                    f"finetuned_temperature is {finetuned_temperature:g}", "finetuned")
            finetuned_temperature = finetuned.temperature
    finetuned_temperature = require_positive(finetuned_temperature, "finetuned_temperature")
    if method == "ensemble":
        if ft is None:
            raise GlaInputError("method 'ensemble' needs finetuned logits")
        if alpha is None or not 0.0 <= alpha <= 1.0:
            raise GlaInputError(f"alpha: expected a number in [0, 1], got {alpha}")
        if source_prior is not None or target_prior is not None:
            raise GlaInputError("source_prior and target_prior apply to method 'gla' only: the ensemble's "
                                "implied prior is not uniform")
    elif source_prior is not None and ft is None:
        raise GlaInputError("source_prior needs finetuned logits: without them the output is the debiased "
                            "zero-shot model")
    parts = None if prior is None and method == "ensemble" else _prior_parts(prior, c, "prior")
    if zeroshot_temperature is not None:
        t_zs = require_positive(zeroshot_temperature, "zeroshot_temperature")
    elif parts is not None and parts.temperature is not None:
        t_zs = parts.temperature
    else:
        raise GlaInputError("zeroshot_temperature is needed: a prior given as probabilities carries no temperature "
                            "(give the T it was fitted at, e.g. PriorFit.temperature)")
    divisor = t_zs
    if isinstance(zeroshot, RowRecord) and zeroshot_temperature is None:  # T_zs is q's: at q's scale exactly
        divisor = t_zs * parts.logits_temperature / zeroshot.temperature
    if method == "ensemble":
        return ensemble_logits(zs, divisor, ft, alpha)
    log_pi_s = None if source_prior is None else _prior_parts(source_prior, c, "source_prior", "pi").log_prior
    log_pi_t = None if target_prior is None else _prior_parts(target_prior, c, "target_prior", "pi").log_prior
    return gla_logits(zs, divisor, parts.log_prior, ft, log_pi_s, finetuned_temperature, log_pi_t)


def debias(logits: Any, prior: Any, *, temperature: float | None = None) -> np.ndarray:
    """The zero-shot model with its pre-training prior removed: ``z / T - log q``.

    Parameters:
        logits: [N, C] zero-shot logits at the scale ``q`` was fitted on.
        prior: ``q`` as in :func:`combine` (a :class:`PriorFit`, a :class:`Prior` record or [C]
            probabilities).
        temperature: ``T``; default the prior's (needed for bare probabilities).

    Returns:
        [N, C] float32 logits; their softmax is the zero-shot model for a uniform label distribution.
    """
    return combine(logits, prior, zeroshot_temperature=temperature)


# --------------------------------------------------------------------------- calibration, label shift


def fit_temperature(logits: Any, labels: Any, *, method: str = "nll") -> float:
    """The temperature ``T`` that calibrates ``softmax(logits / T)`` on labelled rows.

    - ``"nll"``: ``T = argmin mean_i CE(z_i / T, y_i)``, convex in ``1 / T`` (Newton; exact).
    - ``"confidence"``: ``T`` such that ``mean_i max_k softmax(z_i / T)_k`` equals top-1 accuracy.

    Parameters:
        logits: [N, C] logits (numpy or torch, any device).
        labels: [N] class indices.
        method: ``"nll"`` or ``"confidence"``.

    Returns:
        ``T`` in ``[1e-4, 1e4]`` (a bound when the rows are separable or carry no signal).
    """
    require_choice(method, TEMPERATURE_METHODS, "method")
    z = _matrix(logits, "logits", keep_tensor=True)
    y = _labels(labels, z.shape[0], z.shape[1], "labels", "to fit a temperature")
    if _is_tensor(z):
        import torch

        y = torch.from_numpy(y).to(z.device)
    try:
        return fit_temperature_nll(z, y) if method == "nll" else fit_temperature_confidence(z, y)
    except ValueError as exc:  # no temperature matches (accuracy at chance): the caller names the rows
        raise GlaInputError(str(exc)) from None


def estimate_target(logits: Any, *, method: str = "mlls", val: tuple[Any, Any] | None = None,
                    calibrate: tuple[Any, Any] | None = None, concentration: float = DEFAULT_CONCENTRATION,
                    tol: float = 1e-8, max_iter: int = 10000, memory_gib: float | None = None) -> TargetFit:
    """The label distribution ``pi_t`` of an unlabelled test set (label shift).

    ``logits`` must be calibrated for a uniform prior (the debiased zero-shot model, a balanced
    probe, GLA logits); ``p_i = softmax(z_i)``.

    - ``"mlls"``: ``pi_t = argmax (1/N) sum_i log(p_i . pi) + (a / (N C)) sum_k log pi_k`` over the
      simplex (EM with SQUAREM; ``a`` = ``concentration``, 0 for the MLE).
    - ``"bbse"``: solve ``P_test(yhat) = P_val(yhat | y) pi_t`` from hard predictions on the
      labelled ``val`` rows, projected onto the simplex.

    Parameters:
        logits: [N, C] test logits (numpy), or a :class:`glacli.core.prior.LogitSource` streaming them.
        method: ``"mlls"`` or ``"bbse"``.
        val: ``(logits [M, C], labels [M])`` of labelled validation rows of the same model (BBSE);
            the logits may be a ``LogitSource`` too.
        calibrate: ``(logits [M, C], labels [M])``: fit a temperature and class biases on them by
            maximum likelihood first (BCTS, :func:`estimate_prior` with ``temperature="nll"``); the
            test scores become ``z / T - log q``.
        concentration: MLLS's Dirichlet pseudo-counts ``a`` (>= 0).
        tol, max_iter: MLLS's stopping rule (KKT residual) and iteration limit.
        memory_gib: MLLS holds the [N, C] float64 probabilities when they fit this (GiB), else
            recomputes them from the rows on every pass. None: no limit.

    Returns:
        :class:`TargetFit` (``prior``, ``log_prior`` [C] float64, ``method``, ``iterations``,
        ``kkt_gap``, ``converged``, ``log_likelihood``).
    """
    require_choice(method, TARGET_METHODS, "method")
    if method == "bbse" and val is None:
        raise GlaInputError("method 'bbse' needs val: labelled validation logits of the same model")
    if method == "mlls" and val is not None:
        raise GlaInputError("val is BBSE's confusion-matrix set: give method='bbse', or drop val")
    if not concentration >= 0 or not math.isfinite(concentration):
        raise GlaInputError(f"concentration must be a number >= 0, got {concentration}")
    require_positive(tol, "tol")
    require_count(max_iter, "max_iter")
    if memory_gib is not None:
        require_positive(memory_gib, "memory_gib")
    source = _source(logits, "logits")
    n, c = source.n_rows, source.n_classes
    if n < c:
        raise GlaInputError(f"has {n} rows for {c} classes: too few to estimate their proportions", "logits")
    scale, log_q = 1.0, np.zeros(c)
    if calibrate is not None:
        cal = _matrix(calibrate[0], "calibrate logits")
        if cal.shape[1] != c:
            raise GlaInputError(f"has {cal.shape[1]} classes but logits has {c}", "calibrate logits")
        cal_y = _labels(calibrate[1], len(cal), c, "calibrate labels", "for calibrate")
        require_every_class(cal_y, _names(c), "calibrate labels", "BCTS fits one bias per class")
        fit = estimate_prior(cal, cal_y, temperature="nll")
        if not fit.converged:
            raise GlaInputError(f"BCTS did not converge in {fit.iterations} iterations (T went to "
                                f"{fit.temperature:.3g}); the validation logits pin it down poorly", "calibrate")
        scale, log_q = 1.0 / fit.temperature, fit.log_prior

    def scores(block: Any) -> np.ndarray:
        """A block of rows as float64 scores calibrated for a uniform prior."""
        return _numpy(block).astype(np.float64) * scale - log_q

    if method == "mlls":
        def passes() -> Any:
            return (probabilities(scores(block)) for block in source.blocks())

        if memory_gib is None or 8.0 * n * c <= memory_gib * 2**30:
            held = list(passes())
            passes = lambda: iter(held)  # noqa: E731 (computed once, read on every EM pass)
        return mlls(passes, c, concentration, tol, max_iter)
    val_source = _source(val[0], "val logits")
    if val_source.n_classes != c:
        raise GlaInputError(f"has {val_source.n_classes} classes but logits has {c}", "val logits")
    val_y = _labels(val[1], val_source.n_rows, c, "val labels", "for method 'bbse'")
    require_every_class(val_y, _names(c), "val labels", "its column of the confusion matrix is undefined")

    def predictions(rows: LogitSource) -> np.ndarray:
        return np.concatenate([scores(block).argmax(1) for block in rows.blocks()])

    try:
        return bbse(predictions(source), predictions(val_source), val_y, c)
    except ValueError as exc:  # a singular confusion matrix: the caller names the validation rows
        raise GlaInputError(str(exc)) from None


def _source(logits: Any, what: str) -> LogitSource:
    """Rows to pass over: a :class:`LogitSource` as given, or a checked array in blocks."""
    return logits if isinstance(logits, LogitSource) else LogitSource.from_array(_matrix(logits, what))


# --------------------------------------------------------------------------- the linear probe


def fit_probe(features: Any, labels: Any, *, val: tuple[Any, Any] | None = None, anchor: Head | None = None,
              init: Head | None = None, wd: float | None = None, balanced: bool = False,
              classnames: Sequence[str] | None = None, max_iter: int = 1000, tol: float = 1e-4, device: str = "cpu",
              float64: bool = False, on_fit: Callable[[PathPoint], None] | None = None,
              on_evaluation: Callable[[float], None] | None = None,
              on_result: Callable[[ProbeResult, AnchorFit | None], None] | None = None) -> Head:
    """A linear-probe head: multinomial logistic regression on frozen features.

    Minimises ``(1/N) sum_i CE(W x_i + b + a, y_i) + (wd / 2) ||W - W_a||^2`` by L-BFGS, with ``a = 0``
    (or ``log pi_s`` with ``balanced``) and ``W_a = 0`` (or the ``anchor`` head at its maximum-likelihood
    scale on the rows). With ``val`` the penalty is chosen on it (log grid from 1 to 1e-7, then a
    finer search) and the temperature calibrated on it by NLL; else ``wd`` is used and ``T = 1``.

    Parameters:
        features: [N, D] features (numpy or torch), or a :class:`glacli.core.probe.ProbeData` streaming
            them (with these labels) from a file larger than memory.
        labels: [N] class indices; every class needs a row.
        val: ``(features [M, D], labels [M])``: the validation rows (features as above).
        anchor: a zero-shot :class:`Head` to anchor the penalty at (CLAP's anchored probe).
        init: a :class:`Head` [C, D] to start from (its logits' scale: weight and bias / temperature).
        wd: a fixed penalty (needed without ``val``).
        balanced: train with the logit-adjusted (balanced) loss.
        classnames: [C] class names (default: the anchor's, else ``"0"..``).
        max_iter, tol: L-BFGS's limit and relative tolerance.
        device: ``"cpu"``, ``"cuda"``, ``"auto"``; float64: solve in float64.
        on_fit: told each penalty the search fits (a ``PathPoint``: wd, validation scores).
        on_evaluation: told the loss at each L-BFGS function evaluation (progress).
        on_result: told the solver's whole record (the penalty path, the uncalibrated validation NLL)
            and the anchor's fit (None without ``anchor``).

    Returns:
        :class:`Head` (``weight`` [C, D], ``bias`` [C], ``temperature``); ``head.logits(x)`` gives
        ``(x W^T + b) / T``. ``attrs`` records the penalty, iterations and validation scores.
    """
    import torch  # the probe's solver is torch

    from glacli.base.devices import resolve_device
    from glacli.core.anchor import fit_anchor
    from glacli.core.heads import head_tensors
    from glacli.core.probe import ProbeData, SolverOptions, train_probe

    x = features if isinstance(features, ProbeData) else _matrix(features, "features", keep_tensor=True)
    n_rows, n_dims = (x.n_rows, x.n_features) if isinstance(x, ProbeData) else tuple(x.shape)
    n_classes = (len(classnames) if classnames is not None else anchor.weight.shape[0] if anchor is not None
                 else int(_numpy(labels).max()) + 1 if len(_numpy(labels)) else 0)
    names = check_classnames(classnames, "classnames") if classnames is not None else (
        list(anchor.classnames) if anchor is not None else _names(n_classes))
    y = _labels(labels, n_rows, n_classes, "labels", "to fit a probe")
    require_every_class(y, names, "labels", "a linear probe needs every class")
    if wd is None and val is None:
        raise GlaInputError("give val to choose the penalty on a validation set, or wd to fix it")
    if wd is not None:
        wd = require_positive(wd, "wd")
    require_count(max_iter, "max_iter")
    require_positive(tol, "tol")
    if anchor is not None and anchor.head_type != "zeroshot":
        raise GlaInputError(f"is a {anchor.head_type!r} head; anchor takes a zero-shot head", "anchor")
    for head, what in ((anchor, "anchor"), (init, "init")):
        if head is not None and head.weight.shape != (n_classes, n_dims):
            raise GlaInputError(f"has shape {head.weight.shape} but the features need ({n_classes}, {n_dims})", what)
    val_x = val_y = None
    if val is not None:
        val_x = val[0] if isinstance(val[0], ProbeData) else _matrix(val[0], "val features", keep_tensor=True)
        val_rows, val_dims = (val_x.n_rows, val_x.n_features) if isinstance(val_x, ProbeData) else tuple(val_x.shape)
        if val_dims != n_dims:
            raise GlaInputError(f"has {val_dims}-dimensional features but features has {n_dims}", "val features")
        val_y = _labels(val[1], val_rows, n_classes, "val labels", "to choose the penalty and the temperature")
    options = SolverOptions(device=resolve_device(device), dtype=torch.float64 if float64 else torch.float32,
                            max_iter=max_iter, tol=tol, search_tol=max(tol, SolverOptions.search_tol))
    train_data = _probe_data(x, y, n_classes, options)
    val_data = None if val_x is None else _probe_data(val_x, val_y, n_classes, options)
    start = None
    if init is not None:
        weight, bias = head_tensors(init, dtype=torch.float64)
        start = (weight / init.temperature, bias / init.temperature)
    anchor_fit = None
    if anchor is not None:
        anchor_fit = fit_anchor(train_data, *head_tensors(anchor, dtype=torch.float64), anchor.temperature, options)
    result = train_probe(train_data, val=val_data, wd=wd, options=options, init=start,
                         anchor=None if anchor_fit is None else (anchor_fit.weight, anchor_fit.bias),
                         balanced=balanced, on_fit=on_fit, on_evaluation=on_evaluation)
    if on_result is not None:
        on_result(result, anchor_fit)
    attrs = {"wd": result.wd, "iterations": result.iterations, "final_loss": result.final_loss,
             "converged": result.converged, "balanced": balanced, "n_rows": n_rows}
    if result.val_accuracy is not None:
        attrs.update(val_accuracy=result.val_accuracy, val_nll=result.val_nll)
    if anchor_fit is not None:
        attrs.update(anchor_temperature=anchor_fit.temperature, anchor_t_zs=anchor_fit.t_zs)
    return Head(result.weight, result.bias, names, "linear" if anchor_fit is None else "anchored",
                result.temperature, attrs)


def _probe_data(features: Any, labels: np.ndarray, n_classes: int, options: Any) -> Any:
    """The rows as the solver takes them: a ``ProbeData`` as given (its labels must be ``labels``),
    a checked array held on the compute device."""
    import torch

    from glacli.core.probe import ProbeData

    if isinstance(features, ProbeData):
        if not np.array_equal(features.labels.cpu().numpy(), labels):
            raise GlaInputError("the streamed rows hold other labels than those given", "labels")
        return features
    tensor = torch.as_tensor(features).to(options.device, options.dtype)
    return ProbeData.from_tensors(tensor, torch.from_numpy(labels), n_classes)


# --------------------------------------------------------------------------- evaluation


def evaluate(logits_by_name: Mapping[str, Any], labels: Any, *, prior: Any = None, train_counts: Any = None,
             many_shot_above: int | None = None, few_shot_below: int | None = None, target_prior: Any = None,
             bootstrap: int = 0, baseline: str | None = None, seed: int = 0, confidence: float = 0.95,
             stratified: bool = True, classnames: Sequence[str] | None = None, tags: Mapping[str, Any] | None = None,
             label_shift: bool = False, device: str = "cpu", progress: Reporter | None = None) -> dict[str, Any]:
    """Metrics of several models on the same labelled rows: the results document of ``gla evaluate --json``.

    Per model: top-1 and top-k accuracy (k = 5, at most C), mean per-class accuracy, NLL of
    ``softmax(z)``, ECE (15 equal-width bins), with ``prior`` the accuracy of the head / medium /
    tail thirds of classes ranked by ``q``, and with ``train_counts`` the many / medium / few-shot
    accuracies. With ``bootstrap = B`` the rows are resampled ``B`` times (seeded): each metric gets
    a percentile interval at ``confidence`` (``ci``), and with ``baseline`` each other model gets its
    paired difference to it (``vs_baseline``). Under label shift (``target_prior`` given, or
    ``label_shift``) a model whose top-1 rises over the baseline (else the first model) while its
    mean per-class accuracy falls below chance + 1 pp is flagged in ``warnings``.

    Parameters:
        logits_by_name: name -> [N, C] logits (numpy, torch, or a
            :class:`glacli.core.prior.LogitSource` streaming them), the same rows in the same order.
        labels: [N] class indices.
        prior: ``q`` for the head / medium / tail groups (a :class:`PriorFit`, a :class:`Prior` record
            or [C] probabilities).
        train_counts: [C] training rows per class, for the many / medium / few-shot groups (more than
            ``many_shot_above`` rows, default 100; fewer than ``few_shot_below``, default 20).
        target_prior: [C] an estimated test label distribution (a :class:`TargetFit`, a
            :class:`Prior` record or probabilities): its L1 and max error against the label proportions.
        bootstrap: resamples (0: none); seed, confidence: theirs; stratified: resample within each
            class (class counts fixed) or from all rows.
        baseline: the name the paired differences are taken against (needs ``bootstrap``).
        classnames: [C] names recorded in the document (default ``"0"..``).
        tags: the run's settings recorded in the document (``gla report`` pools by them).
        label_shift: whether the models were adapted to a test label distribution.
        device: ``"cpu"`` (numpy; no torch), ``"cuda"``, ``"auto"``: where the metrics are computed.
        progress: told the rows evaluated and the resamples drawn (the commands' progress bar).

    Returns:
        The results document (schema ``gla-evaluate``, docs/evaluate.md) as plain JSON values:
        ``doc["results"][i]["metrics"]["top1"]``, ``doc["results"][i]["ci"]["top1"]``, ...
    """
    from glacli.core import bootstrap as _bootstrap  # the metrics load with the first evaluation (start-up)
    from glacli.core import metrics as _metrics
    from glacli.io import results_json

    if not isinstance(logits_by_name, Mapping) or not logits_by_name:
        raise GlaInputError("logits_by_name: expected a dict of name -> logits with at least one entry")
    progress = progress or Reporter()
    names = [str(name) for name in logits_by_name]
    sources = [values if isinstance(values, LogitSource) else _matrix(values, f"logits_by_name[{name!r}]",
                                                                       keep_tensor=True)
               for name, values in zip(names, logits_by_name.values())]
    shapes = [(s.n_rows, s.n_classes) if isinstance(s, LogitSource) else tuple(s.shape) for s in sources]
    n, c = shapes[0]
    for name, shape in zip(names, shapes):
        if shape != (n, c):
            raise GlaInputError(f"has shape {shape} but {names[0]!r} has {(n, c)}", f"logits_by_name[{name!r}]")
    y = _labels(labels, n, c, "labels", "to evaluate")
    require_count(bootstrap, "bootstrap", minimum=0)
    require_count(seed, "seed", minimum=0)
    if not 0 < confidence < 1:
        raise GlaInputError(f"confidence: expected a number between 0 and 1 (e.g. 0.95), got {confidence}")
    if baseline is not None:
        if not bootstrap:
            raise GlaInputError("baseline compares models on bootstrap resamples: give bootstrap=N too")
        if baseline not in names:
            raise GlaInputError(f"baseline: no model is named {baseline!r} (names: {', '.join(names)})")
    names_c = check_classnames(classnames, "classnames") if classnames is not None else _names(c)
    if len(names_c) != c:
        raise GlaInputError(f"has {len(names_c)} names for {c} classes", "classnames")
    groups: dict[str, np.ndarray] = {}
    inputs: dict[str, dict[str, Any] | None] = {"prior": None, "train": None, "target_prior": None}
    if prior is not None:
        q = _probabilities(prior, c, "prior", "q")
        groups.update(_metrics.prior_groups(q))
        inputs["prior"] = {"path": None, "gla_id": _gla_id(prior), "q": q}
    if train_counts is not None:
        counts = _counts(train_counts, c, "train_counts")
        many = require_count(_metrics.MANY_SHOT_ABOVE if many_shot_above is None else many_shot_above,
                             "many_shot_above", minimum=0)
        few = require_count(_metrics.FEW_SHOT_BELOW if few_shot_below is None else few_shot_below,
                            "few_shot_below", minimum=0)
        if few > many:
            raise GlaInputError(f"few_shot_below ({few}) must not exceed many_shot_above ({many}): a class would "
                                "be both many-shot and few-shot")
        groups.update(_metrics.shot_groups(counts, many, few))
        inputs["train"] = {"path": None, "gla_id": "", "counts": counts, "many_shot_above": many,
                           "few_shot_below": few}
    if target_prior is not None:
        estimate = _probabilities(target_prior, c, "target_prior", "pi")
        true = _metrics.class_counts(y, c) / n
        error = np.abs(estimate - true)
        inputs["target_prior"] = {"path": None, "gla_id": _gla_id(target_prior),
                                  "method": getattr(target_prior, "method", None), "estimate": estimate,
                                  "true": true, "l1": float(error.sum()), "max_abs_error": float(error.max())}
    results, rows = _measure(sources, y, c, bootstrap > 0, device, progress)
    summaries = [_metrics.summarise(r, groups) for r in results]
    resampled = None
    if bootstrap:
        progress.start("bootstrap resamples", bootstrap)
        draws = _bootstrap.resampled_metrics(rows, y, c, results[0].k, len(results[0].reliability.count), groups,
                                             bootstrap, seed, stratified, chunking.compute_rows(6 * 8 * n),
                                             progress.advance)
        resampled = [{"ci": _bootstrap.intervals(d, confidence)} for d in draws]
        if baseline is not None:
            base = names.index(baseline)
            for i, entry in enumerate(resampled):
                if i != base:
                    paired = _bootstrap.paired_intervals(draws[i], draws[base], confidence)
                    entry["vs_baseline"] = {key: {"difference": summaries[i][key] - summaries[base][key],
                                                  "ci": paired[key]} for key in summaries[i]}
    shifted = label_shift or target_prior is not None
    return results_json.build_document(
        names, results, summaries, resampled, classnames=names_c, groups=groups, tags=dict(tags or {}),
        inputs=inputs, label_shift=shifted,
        bootstrap=None if not bootstrap else {
            "resamples": bootstrap, "seed": seed, "confidence": confidence,
            "sampling": "stratified" if stratified else "plain", "interval": "percentile", "baseline": baseline},
        warnings=_majority_flags(names, summaries, c, baseline) if shifted else [])


def _probabilities(prior: Any, n_classes: int, what: str, role: str) -> np.ndarray:
    """[C] probabilities of a prior (a record's own, else ``exp`` of its checked log)."""
    log_prior = _prior_parts(prior, n_classes, what, role).log_prior
    return np.asarray(prior.prior, dtype=np.float64) if isinstance(prior, (PriorFit, Prior, TargetFit)) \
        else np.exp(log_prior)


def _gla_id(record: Any) -> str:
    return record.gla_id if isinstance(record, Prior) else ""


def _counts(values: Any, n_classes: int, what: str) -> np.ndarray:
    """[C] non-negative integer counts."""
    array = require_numeric(_numpy(values), what, what)
    if array.shape != (n_classes,):
        raise GlaInputError(f"expected {n_classes} counts, one per class, got shape {array.shape}", what)
    if not np.array_equal(array, np.round(array)) or (array < 0).any():
        raise GlaInputError("expected non-negative integer counts", what)
    return array.astype(np.int64)


def _measure(sources: list[Any], labels: np.ndarray, n_classes: int, keep_rows: bool, device: str,
             progress: Reporter) -> tuple[list[Any], list[Any]]:
    """The metrics of every model in one pass over its rows, and with ``keep_rows`` the per-row
    values the bootstrap resamples."""
    from glacli.base.devices import compute_device
    from glacli.core.metrics import MetricAccumulator

    compute = compute_device(device)
    move = _mover(compute)
    step = chunking.compute_rows(8 * n_classes, compute.split(":")[0])
    progress.start("evaluating", len(labels) * len(sources))
    results, rows = [], []
    for source in sources:
        accumulator = MetricAccumulator(n_classes, keep_rows=keep_rows)
        blocks = source.blocks() if isinstance(source, LogitSource) else (
            source[start:start + step] for start in range(0, len(labels), step))
        start = 0
        for block in blocks:
            stop = start + len(block)
            accumulator.update(move(block), move(labels[start:stop]))
            progress.advance(stop - start)
            start = stop
        if start != len(labels):
            raise GlaInputError(f"a source streamed {start} rows but says it has {len(labels)}")
        results.append(accumulator.result())
        if keep_rows:
            rows.append(accumulator.rows())
    return results, rows


def _mover(device: str) -> Any:
    """How a block reaches ``device`` (torch is imported only for a GPU)."""
    if device == "cpu":
        return lambda block: block
    import torch

    return lambda block: (block if _is_tensor(block) else torch.from_numpy(np.ascontiguousarray(block))).to(device)


def _majority_flags(names: list[str], summaries: list[dict[str, float]], n_classes: int,
                    baseline: str | None) -> list[str]:
    """Under label shift top-1 rewards predicting the frequent classes: flag a model whose top-1 rises
    over the baseline (else the first) while its mean per-class accuracy falls below chance (1/C) + 1 pp,
    i.e. it no longer tells the classes apart."""
    base = names.index(baseline) if baseline in names else 0
    floor = 1.0 / n_classes + 0.01
    return [f"{name}: top-1 rises over {names[base]} ({100 * summary['top1'] - 100 * summaries[base]['top1']:+.2f} "
            f"pp) while mean per-class accuracy is {100 * summary['mean_per_class']:.2f}%, below chance + 1 pp "
            f"({100 * floor:.2f}%): it gains by predicting the frequent classes (docs/label-shift.md)"
            for i, (name, summary) in enumerate(zip(names, summaries))
            if i != base and summary["top1"] > summaries[base]["top1"] and summary["mean_per_class"] < floor]


# --------------------------------------------------------------------------- files


def load(path: str | Path) -> RowRecord | Head | Prior:
    """Open any gla file as a record: a :class:`RowRecord` (features, logits), a :class:`Head` or a
    :class:`Prior` (q, or a test label distribution from ``estimate-target``)."""
    from glacli.io.h5file import file_kind  # h5py: only when a file is read
    from glacli.io.paramfile import read_head, read_prior
    from glacli.io.rowfile import read_rows

    kind = file_kind(path)
    if kind == "head":
        return read_head(path)
    if kind == "prior":
        return read_prior(path)
    with read_rows(path, kind) as rows:
        attrs = {k: v for k, v in rows.attrs.items() if k != "temperature"}
        return RowRecord(kind, rows.read(dtype=rows.dtype), rows.labels, rows.ids(), rows.classnames,
                         rows.temperature, attrs)


def save(record: RowRecord | Head | Prior, path: str | Path) -> None:
    """Write a record as a gla file the commands read (atomically; provenance attributes added, the
    record's ``gla_id`` kept as its parent). A :class:`PriorFit` becomes a prior file with
    ``Prior(..., log_prior=fit.log_prior, ...)`` first, since a file names its classes."""
    from glacli.io.h5file import PROVENANCE_ATTRS, ROW_KINDS  # h5py: only when a file is written
    from glacli.io.outputs import check_output_path
    from glacli.io.paramfile import write_head, write_prior
    from glacli.io.rowfile import write_features, write_logits

    check_output_path(path)
    parents = [str(record.attrs["gla_id"])] if isinstance(record, (RowRecord, Head, Prior)) and \
        record.attrs.get("gla_id") else []
    if isinstance(record, Head):
        write_head(path, record, parents)
    elif isinstance(record, Prior):
        write_prior(path, record, parents)
    elif isinstance(record, RowRecord):
        require_choice(record.kind, ROW_KINDS, "kind")
        values = _matrix(record.values, "values")
        labels = np.asarray(record.labels, dtype=np.int64)
        if labels.shape != (len(values),) or len(record.ids) != len(values):
            raise GlaInputError(f"has {len(values)} rows but {len(labels)} labels and {len(record.ids)} ids", "record")
        require_label_range(labels, len(record.classnames), "labels")
        attrs = {k: v for k, v in record.attrs.items() if k not in PROVENANCE_ATTRS}
        if record.kind == "logits":
            write_logits(path, values, labels, list(record.ids), record.classnames,
                         attrs={**attrs, "temperature": record.temperature}, parents=parents)
        else:
            write_features(path, values, labels, list(record.ids), record.classnames, attrs=attrs,
                           parents=parents, dtype=values.dtype if values.dtype == np.float16 else np.float32)
    else:
        raise GlaInputError(f"cannot save a {type(record).__name__}: give a RowRecord, a Head or a Prior", "record")
