"""Classification metrics over logits, accumulated chunk by chunk (pure torch/numpy; no I/O).

A logits file can hold more rows than fit in memory, so :class:`MetricAccumulator` keeps only
sums of size O(C) and O(bins): it is updated with one chunk of rows at a time and the result
does not depend on how the rows were chunked. Definitions (``z_i`` the logits of sample ``i``,
``y_i`` its label, ``p_i = softmax(z_i)``, N samples, C classes):

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
  group's classes are weighted by their test counts, not equally).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from glacli.types import Metrics, Reliability, ratio

N_BINS = 15
TOP_K = 5
MANY_SHOT_ABOVE = 100
FEW_SHOT_BELOW = 20
TOPK_KEY = re.compile(r"^top([2-9]|[1-9][0-9]+)$")


class MetricAccumulator:
    """Streaming top-1/top-k/per-class accuracy, NLL and ECE over chunks of ``[n, C]`` logits.

    ``update`` may be called with chunks of any size (numpy or torch, any float dtype); the
    sums are kept in float64/int64 on ``device``, so memory is O(C + bins) whatever N is.
    """

    def __init__(self, n_classes: int, n_bins: int = N_BINS, top_k: int = TOP_K,
                 device: str | torch.device = "cpu"):
        if n_classes < 1 or n_bins < 1 or top_k < 1:
            raise ValueError("n_classes, n_bins and top_k must be positive")
        self.n_classes, self.n_bins, self.k = n_classes, n_bins, min(top_k, n_classes)
        self.device = torch.device(device)
        self.edges = np.linspace(0.0, 1.0, n_bins + 1)
        self._inner_edges = torch.as_tensor(self.edges[1:-1], device=self.device)
        zeros = lambda n, dtype: torch.zeros(n, dtype=dtype, device=self.device)
        self._class_correct = zeros(n_classes, torch.int64)
        self._class_count = zeros(n_classes, torch.int64)
        self._bin_count = zeros(n_bins, torch.int64)
        self._bin_correct = zeros(n_bins, torch.int64)
        self._bin_confidence = zeros(n_bins, torch.float64)
        self._topk_correct = 0
        self._nll_sum = 0.0

    def update(self, logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        """Add the rows ``logits [n, C]`` with their ``labels [n]`` (all in ``0..C-1``)."""
        z = torch.as_tensor(logits, device=self.device).to(torch.float64)
        y = torch.as_tensor(labels, device=self.device).to(torch.int64)
        if z.ndim != 2 or z.shape[1] != self.n_classes or y.shape != (z.shape[0],):
            raise ValueError(f"expected logits [n, {self.n_classes}] and labels [n], "
                             f"got {tuple(z.shape)} and {tuple(y.shape)}")
        if not len(y):
            return
        z_true = z.gather(1, y[:, None])
        classes = torch.arange(self.n_classes, device=self.device)
        rank = (z > z_true).sum(1) + ((z == z_true) & (classes < y[:, None])).sum(1)
        correct = rank == 0
        log_norm = torch.logsumexp(z, dim=1)
        confidence = torch.exp(z.amax(1) - log_norm)
        bins = torch.bucketize(confidence, self._inner_edges)

        self._class_count += torch.bincount(y, minlength=self.n_classes)
        self._class_correct += torch.bincount(y[correct], minlength=self.n_classes)
        self._bin_count += torch.bincount(bins, minlength=self.n_bins)
        self._bin_correct += torch.bincount(bins[correct], minlength=self.n_bins)
        self._bin_confidence += torch.bincount(bins, weights=confidence, minlength=self.n_bins)
        self._topk_correct += int((rank < self.k).sum())
        self._nll_sum += float((log_norm - z_true.squeeze(1)).sum())

    def result(self) -> Metrics:
        """The metrics of all rows seen so far (NaN everywhere if there were none)."""
        class_correct = self._class_correct.cpu().numpy()
        class_count = self._class_count.cpu().numpy()
        bin_count = self._bin_count.cpu().numpy()
        bin_correct = self._bin_correct.cpu().numpy()
        bin_confidence = self._bin_confidence.cpu().numpy()
        n = int(class_count.sum())
        nan = float("nan")
        bin_accuracy = ratio(bin_correct, bin_count)
        bin_mean_confidence = ratio(bin_confidence, bin_count)
        ece = float((np.abs(bin_correct - bin_confidence)).sum() / n) if n else nan
        per_class = ratio(class_correct, class_count)
        return Metrics(
            n_samples=n, k=self.k,
            top1=float(class_correct.sum() / n) if n else nan,
            topk=self._topk_correct / n if n else nan,
            mean_per_class=float(np.nanmean(per_class)) if n else nan,
            nll=self._nll_sum / n if n else nan,
            ece=ece,
            class_correct=class_correct, class_count=class_count,
            reliability=Reliability(self.edges.copy(), bin_count, bin_mean_confidence, bin_accuracy),
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


def shot_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Many / medium / few-shot classes: more than 100, 20 to 100, fewer than 20 training images."""
    counts = np.asarray(train_counts)
    many = counts > MANY_SHOT_ABOVE
    few = counts < FEW_SHOT_BELOW
    return {"many_shot": np.flatnonzero(many), "medium_shot": np.flatnonzero(~many & ~few),
            "few_shot": np.flatnonzero(few)}


def rank_by(scores: np.ndarray) -> np.ndarray:
    """Class indices ordered by ``scores``, largest first, ties in index order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[C] number of samples per class (labels in ``0..C-1``)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)


GROUP_RULES: dict[str, str] = {
    "q_head": "first third of the classes ranked by the prior q, most likely first",
    "q_medium": "second third of the classes ranked by the prior q",
    "q_tail": "last third of the classes ranked by the prior q (least likely)",
    "many_shot": f"classes with more than {MANY_SHOT_ABOVE} training images",
    "medium_shot": f"classes with {FEW_SHOT_BELOW} to {MANY_SHOT_ABOVE} training images",
    "few_shot": f"classes with fewer than {FEW_SHOT_BELOW} training images",
}


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
    summary.update({name: metrics.group_accuracy(classes) for name, classes in groups.items()})
    return summary
