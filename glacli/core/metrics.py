"""Classification metrics over logits, accumulated chunk by chunk (pure numpy / array API; no I/O).

A logits file can hold more rows than fit in memory, so :class:`MetricAccumulator` keeps only
sums of size O(C) and O(bins) (:class:`Sums`): it is updated with one chunk of rows at a time and
the result does not depend on how the rows were chunked. Every metric is a function of those
sums (:func:`scalars`, :func:`group_values`), with a leading axis of resamples, so the bootstrap
(:mod:`glacli.core.bootstrap`) computes them by the same formulas from reweighted sums. Definitions
(``z_i`` the logits of sample ``i``, ``y_i`` its label, ``p_i = softmax(z_i)``, N samples, C classes):

- top-k: fraction of samples whose label is among the k highest logits, with k = min(5, C);
  its key is ``top5``, or ``top{k}`` for fewer than 5 classes (:func:`topk_key`). Ties are broken
  toward the lower class index, as ``argmax`` does: the rank of ``y_i`` is
  ``#{j: z_ij > z_iy} + #{j < y_i: z_ij = z_iy}``, and top-k counts rank < k.
- mean per-class accuracy: the mean over classes that have test samples of their top-1 accuracy.
- NLL: ``mean_i (logsumexp(z_i) - z_iy)``, the cross-entropy of ``softmax(z_i)`` in nats.
- ECE: confidence ``c_i = max_k p_ik``; 15 equal-width bins ``(b/15, (b+1)/15]`` of confidence;
  ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` with ``acc_b`` the top-1 accuracy and ``conf_b``
  the mean confidence of the samples in bin b.
- group accuracy: the top-1 accuracy over the test samples whose label is in the group (so a
  group's classes are weighted by their test counts, not equally); a ``*_class_mean`` group is
  the mean of its classes' accuracies instead (the GLA paper's ``shot_acc``).

The per-row values are computed in the array namespace of the logits (numpy, or torch on a GPU;
torch is never imported here), then moved to numpy, which is O(N) and not O(N x C).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, to_device

from glacli.base.types import Metrics, Reliability, ratio

N_BINS = 15
TOP_K = 5
MANY_SHOT_ABOVE = 100
FEW_SHOT_BELOW = 20
CLASS_MEAN = "_class_mean"
TOPK_KEY = re.compile(r"^top([2-9]|[1-9][0-9]+)$")


@dataclass
class RowValues:
    """What the metrics need of each sample, from its logits row: kept for the bootstrap, which
    resamples these O(N) values instead of the O(N x C) logits."""

    correct: np.ndarray
    """[N] bool: top-1 correct."""
    in_top_k: np.ndarray
    """[N] bool: the label's rank is below k."""
    nll: np.ndarray
    """[N] float64: ``logsumexp(z_i) - z_iy``."""
    confidence: np.ndarray
    """[N] float64: ``max_k p_ik``."""
    bin: np.ndarray
    """[N] int64: the ECE bin of the confidence."""


def row_values(logits: Any, labels: Any, k: int, inner_edges: np.ndarray) -> RowValues:
    """The per-row values of ``logits [n, C]`` (numpy or torch, any float dtype) at ``labels [n]``,
    computed in float64 in the logits' namespace and returned as numpy arrays."""
    xp = array_namespace(logits)
    z = xp.astype(logits, xp.float64)
    where = device(z)
    y = xp.astype(xp.asarray(labels, device=where), xp.int64)
    z_true = xp.take_along_axis(z, y[:, None], axis=1)
    classes = xp.arange(z.shape[1], device=where)
    rank = xp.sum(xp.astype(z > z_true, xp.int64), axis=1) \
        + xp.sum(xp.astype((z == z_true) & (classes[None, :] < y[:, None]), xp.int64), axis=1)
    top = xp.max(z, axis=1)
    log_norm = top + xp.log(xp.sum(xp.exp(z - top[:, None]), axis=1))
    host = lambda a: np.asarray(to_device(a, "cpu"))
    confidence = host(xp.exp(top - log_norm))
    rank = host(rank)
    return RowValues(correct=rank == 0, in_top_k=rank < k, nll=host(log_norm - z_true[:, 0]),
                     confidence=confidence, bin=np.searchsorted(inner_edges, confidence, side="left"))


@dataclass
class Sums:
    """The sufficient statistics of every metric, each with a leading axis of resamples (length 1
    for the data itself): a resample's metrics are these sums with rows counted by its weights."""

    class_correct: np.ndarray
    """[b, C] top-1 correct samples per class."""
    class_count: np.ndarray
    """[b, C] samples per class."""
    topk_correct: np.ndarray
    """[b] samples whose label is in the top k."""
    nll: np.ndarray
    """[b] sum of the per-row NLL."""
    bin_count: np.ndarray
    """[b, bins] samples per confidence bin."""
    bin_correct: np.ndarray
    """[b, bins] top-1 correct samples per bin."""
    bin_confidence: np.ndarray
    """[b, bins] sum of the confidences per bin."""

    @property
    def n(self) -> np.ndarray:
        return self.class_count.sum(1)


def scalars(sums: Sums, k: int) -> dict[str, np.ndarray]:
    """top-1, top-k (keyed :func:`topk_key`), mean per-class accuracy, NLL and ECE, each [b]
    (NaN where a resample has no rows)."""
    n = sums.n.astype(np.float64)
    per_class = ratio(sums.class_correct, sums.class_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_per_class = np.nansum(per_class, 1) / (sums.class_count > 0).sum(1)
        return {"top1": sums.class_correct.sum(1) / n, topk_key(k): sums.topk_correct / n,
                "mean_per_class": mean_per_class, "nll": sums.nll / n,
                "ece": np.abs(sums.bin_correct - sums.bin_confidence).sum(1) / n}


def group_values(class_correct: np.ndarray, class_count: np.ndarray, groups: dict[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
    """Each group's accuracy from ``[b, C]`` per-class sums, [b] each: pooled over the group's test
    samples, or for a ``*_class_mean`` group the mean over its classes with test samples of their
    accuracy. NaN where the group has no test samples."""
    per_class = ratio(class_correct, class_count)
    tested = class_count > 0
    values = {}
    for name, classes in groups.items():
        if is_class_mean(name):
            numerator = np.nansum(per_class[:, classes], 1)
            denominator = tested[:, classes].sum(1)
        else:
            numerator = class_correct[:, classes].sum(1)
            denominator = class_count[:, classes].sum(1)
        values[name] = ratio(numerator.astype(np.float64), denominator)
    return values


class MetricAccumulator:
    """Streaming top-1/top-k/per-class accuracy, NLL and ECE over chunks of ``[n, C]`` logits.

    ``update`` may be called with chunks of any size (numpy or torch, any float dtype); the sums
    are kept in float64/int64 numpy arrays, so memory is O(C + bins) whatever N is. With
    ``keep_rows`` the per-row values are kept too (O(N), for the bootstrap).
    """

    def __init__(self, n_classes: int, n_bins: int = N_BINS, top_k: int = TOP_K, keep_rows: bool = False):
        if n_classes < 1 or n_bins < 1 or top_k < 1:
            raise ValueError("n_classes, n_bins and top_k must be positive")
        self.n_classes, self.n_bins, self.k = n_classes, n_bins, min(top_k, n_classes)
        self.edges = np.linspace(0.0, 1.0, n_bins + 1)
        zeros = lambda *shape: np.zeros((1, *shape), dtype=np.float64)
        self.sums = Sums(zeros(n_classes), zeros(n_classes), np.zeros(1), np.zeros(1),
                         zeros(n_bins), zeros(n_bins), zeros(n_bins))
        self._rows: list[RowValues] | None = [] if keep_rows else None

    def update(self, logits: Any, labels: Any) -> None:
        """Add the rows ``logits [n, C]`` with their ``labels [n]`` (all in ``0..C-1``)."""
        if len(logits.shape) != 2 or logits.shape[1] != self.n_classes or tuple(labels.shape) != (logits.shape[0],):
            raise ValueError(f"expected logits [n, {self.n_classes}] and labels [n], "
                             f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
        if not logits.shape[0]:
            return
        rows = row_values(logits, labels, self.k, self.edges[1:-1])
        y = np.asarray(to_device(labels, "cpu"), dtype=np.int64)
        s, c, b = self.sums, self.n_classes, self.n_bins
        s.class_count[0] += np.bincount(y, minlength=c)
        s.class_correct[0] += np.bincount(y[rows.correct], minlength=c)
        s.bin_count[0] += np.bincount(rows.bin, minlength=b)
        s.bin_correct[0] += np.bincount(rows.bin[rows.correct], minlength=b)
        s.bin_confidence[0] += np.bincount(rows.bin, weights=rows.confidence, minlength=b)
        s.topk_correct[0] += rows.in_top_k.sum()
        s.nll[0] += rows.nll.sum()
        if self._rows is not None:
            self._rows.append(rows)

    def rows(self) -> RowValues:
        """The per-row values of every row seen, in order (needs ``keep_rows``)."""
        if self._rows is None:
            raise ValueError("per-row values were not kept (keep_rows=False)")
        return RowValues(*(np.concatenate([getattr(r, f) for r in self._rows] or [np.zeros(0)])
                           for f in RowValues.__dataclass_fields__))

    def result(self) -> Metrics:
        """The metrics of all rows seen so far (NaN everywhere if there were none)."""
        s = self.sums
        values = {key: float(v[0]) for key, v in scalars(s, self.k).items()}
        class_correct = s.class_correct[0].astype(np.int64)
        class_count = s.class_count[0].astype(np.int64)
        bin_count = s.bin_count[0].astype(np.int64)
        return Metrics(
            n_samples=int(class_count.sum()), k=self.k,
            top1=values["top1"], topk=values[topk_key(self.k)], mean_per_class=values["mean_per_class"],
            nll=values["nll"], ece=values["ece"],
            class_correct=class_correct, class_count=class_count,
            reliability=Reliability(self.edges.copy(), bin_count, ratio(s.bin_confidence[0], bin_count),
                                    ratio(s.bin_correct[0], bin_count)),
        )


def prior_groups(prior: np.ndarray) -> dict[str, np.ndarray]:
    """Head / medium / tail: thirds of the classes ranked by ``prior`` (most likely first).

    When C is not a multiple of 3 the extra classes go to the tail end (333 / 333 / 334 for
    1000 classes, as the GLA paper splits ImageNet; 2 / 3 / 3 for 8); equal priors keep
    class-index order. Returns class indices per group.
    """
    least_likely_first = rank_by(prior)[::-1]
    tail, medium, head = (part[::-1] for part in np.array_split(least_likely_first, 3))
    return {"q_head": head, "q_medium": medium, "q_tail": tail}


def shot_groups(train_counts: np.ndarray, many_above: int = MANY_SHOT_ABOVE, few_below: int = FEW_SHOT_BELOW
                ) -> dict[str, np.ndarray]:
    """Many / medium / few-shot classes: more than ``many_above``, ``few_below`` to ``many_above``,
    fewer than ``few_below`` training images; each twice, pooled (``many_shot``) and as a mean of
    class accuracies (``many_shot_class_mean``), since papers report either."""
    counts = np.asarray(train_counts)
    many = counts > many_above
    few = counts < few_below
    pooled = {"many_shot": np.flatnonzero(many), "medium_shot": np.flatnonzero(~many & ~few),
              "few_shot": np.flatnonzero(few)}
    return {**pooled, **{class_mean_key(name): classes for name, classes in pooled.items()}}


def class_mean_key(group: str) -> str:
    """The key of the mean-of-class-accuracies variant of ``group``."""
    return group + CLASS_MEAN


def is_class_mean(key: str) -> bool:
    return key.endswith(CLASS_MEAN)


def rank_by(scores: np.ndarray) -> np.ndarray:
    """Class indices ordered by ``scores``, largest first, ties in index order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[C] number of samples per class (labels in ``0..C-1``)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)


def group_rules(many_above: int = MANY_SHOT_ABOVE, few_below: int = FEW_SHOT_BELOW) -> dict[str, str]:
    """What each group holds, as recorded in evaluate's JSON."""
    pooled = {
        "q_head": "first third of the classes ranked by the prior q, most likely first",
        "q_medium": "second third of the classes ranked by the prior q",
        "q_tail": "last third of the classes ranked by the prior q (least likely)",
        "many_shot": f"classes with more than {many_above} training images",
        "medium_shot": f"classes with {few_below} to {many_above} training images",
        "few_shot": f"classes with fewer than {few_below} training images",
    }
    means = {class_mean_key(name): f"mean of the class accuracies of the {rule}" for name, rule in pooled.items()
             if name.endswith("_shot")}
    return {name: f"test samples of the {rule}, pooled" for name, rule in pooled.items()} | means


@dataclass(frozen=True)
class MetricInfo:
    """How a scalar metric is shown: table header, full label, and whether it is shown x100."""

    short: str
    label: str
    percent: bool


METRICS: dict[str, MetricInfo] = {
    "top1": MetricInfo("top-1", "top-1 accuracy (%)", True),
    "top5": MetricInfo("top-5", "top-5 accuracy (%)", True),
    "mean_per_class": MetricInfo("mean per class", "mean per-class accuracy (%)", True),
    "nll": MetricInfo("NLL", "NLL (nats)", False),
    "ece": MetricInfo("ECE", "ECE (%, 15 bins)", True),
    "q_head": MetricInfo("head", "head-third accuracy by q (%)", True),
    "q_medium": MetricInfo("med", "medium-third accuracy by q (%)", True),
    "q_tail": MetricInfo("tail", "tail-third accuracy by q (%)", True),
    "many_shot": MetricInfo("many", "many-shot accuracy (%)", True),
    "medium_shot": MetricInfo("med shot", "medium-shot accuracy (%)", True),
    "few_shot": MetricInfo("few", "few-shot accuracy (%)", True),
    "many_shot_class_mean": MetricInfo("many cls", "many-shot mean class accuracy (%)", True),
    "medium_shot_class_mean": MetricInfo("med cls", "medium-shot mean class accuracy (%)", True),
    "few_shot_class_mean": MetricInfo("few cls", "few-shot mean class accuracy (%)", True),
}
"""The scalar metrics of a result, in table order (the keys of ``metrics`` in evaluate's JSON;
``top5`` stands for ``top{k}`` when a result has fewer than 5 classes)."""


def topk_key(k: int) -> str:
    """The metric key of top-k accuracy: ``top5`` for the usual k = 5, else ``top{k}``."""
    return f"top{k}"


def metric_info(key: str) -> MetricInfo:
    """How the metric ``key`` is shown; ``top{k}`` for any k is top-k accuracy. KeyError if unknown."""
    if key not in METRICS and TOPK_KEY.match(key):
        k = key[3:]
        return MetricInfo(f"top-{k}", f"top-{k} accuracy (%)", True)
    return METRICS[key]


def is_metric(key: str) -> bool:
    return key in METRICS or bool(TOPK_KEY.match(key))


def format_metric(key: str, value: float) -> str:
    """Percent with two decimals for accuracies and ECE, four decimals for NLL; '' for NaN."""
    if not np.isfinite(value):
        return ""
    return f"{100 * value:.2f}" if metric_info(key).percent else f"{value:.4f}"


def summarise(metrics: Metrics, groups: dict[str, np.ndarray]) -> dict[str, float]:
    """The scalar metrics of one result, plus one accuracy per group (NaN for an empty group)."""
    summary = {"top1": metrics.top1, topk_key(metrics.k): metrics.topk, "mean_per_class": metrics.mean_per_class,
               "nll": metrics.nll, "ece": metrics.ece}
    values = group_values(metrics.class_correct[None], metrics.class_count[None], groups)
    summary.update({name: float(value[0]) for name, value in values.items()})
    return summary
