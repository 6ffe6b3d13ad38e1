"""Figures of ``gla evaluate`` and ``gla report``, written as PNG files atomically.

matplotlib is imported inside the functions that draw (``gla --help`` stays fast), and only its
object-oriented API is used (``Figure`` rendered by the Agg canvas), so no global pyplot state
or interactive backend is touched.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.types import Reliability
from glacli.io.outputs import atomic_output

SMOOTHING_FRACTION = 0.05


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of ``values`` over ``window`` points, ignoring NaN entries.

    Near the ends the window is truncated (the mean is over the points that exist); a point whose
    whole window is NaN stays NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(len(values))
    lo = np.clip(idx - (window - 1) // 2, 0, len(values))
    hi = np.clip(idx + window // 2 + 1, 0, len(values))
    n = counts[hi] - counts[lo]
    out = np.full(len(values), np.nan)
    np.divide(sums[hi] - sums[lo], n, out=out, where=n > 0)
    return out


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save_png(fig: Any, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


@dataclass
class GroupBars:
    """One method's group accuracies (fractions, NaN for an empty group) and their intervals."""

    name: str
    groups: list[str]
    values: list[float | None]
    intervals: list[Sequence[float | None]] | None = None
    """``[low, high]`` per group, from the bootstrap; None without one."""


def evaluation_figure(path: str | Path, names: Sequence[str], class_accuracies: Sequence[np.ndarray],
                      order: np.ndarray, rank_label: str, reliabilities: Sequence[Reliability],
                      group_bars: Sequence[GroupBars] = ()) -> None:
    """Per-class accuracy against class rank (left), a reliability diagram (middle) and, where there
    are groups, the group accuracies as bars with interval bars (right); one series per file.

    ``order`` lists class indices from rank 1 (most likely / most frequent) on; the accuracy curve
    is a NaN-aware moving average over ``max(1, 5% of C)`` ranks, as in Figure 1 of the GLA paper.
    """
    with_groups = bool(group_bars) and bool(group_bars[0].groups)
    fig = _figure(18 if with_groups else 12, 4.5)
    panels = fig.subplots(1, 3 if with_groups else 2, width_ratios=[1.6, 1, 1.4] if with_groups else [1.6, 1])
    left, right = panels[0], panels[1]
    n_classes = len(order)
    window = max(1, round(SMOOTHING_FRACTION * n_classes))
    ranks = np.arange(1, n_classes + 1)
    for name, accuracy in zip(names, class_accuracies):
        left.plot(ranks, 100 * moving_average(np.asarray(accuracy)[order], window), label=name, lw=1.5)
    left.set_xlabel(rank_label)
    left.set_ylabel("per-class top-1 accuracy (%)" + (f"\nmoving average over {window} classes" if window > 1 else ""))
    left.set_xlim(1, max(n_classes, 2))
    left.grid(alpha=0.3)
    left.legend(loc="best", fontsize="small")

    right.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    for name, rel in zip(names, reliabilities):
        used = rel.count > 0
        right.plot(rel.confidence[used], rel.accuracy[used], marker="o", ms=4, lw=1.2, label=name)
    right.set_xlabel(f"confidence (max probability, {len(reliabilities[0].count)} bins)")
    right.set_ylabel("accuracy")
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.set_aspect("equal")
    right.grid(alpha=0.3)
    right.legend(loc="upper left", fontsize="small")
    right.set_title("reliability diagram")
    if with_groups:
        _group_panel(panels[2], group_bars)
    _save_png(fig, path)


def _group_panel(ax: Any, bars: Sequence[GroupBars]) -> None:
    """Grouped bars of the group accuracies (%), one colour per file, with interval bars."""
    groups = bars[0].groups
    x = np.arange(len(groups), dtype=np.float64)
    width = 0.8 / len(bars)
    for j, bar in enumerate(bars):
        values = 100 * np.array([np.nan if v is None else v for v in bar.values], dtype=np.float64)
        offset = x - 0.4 + (j + 0.5) * width
        ax.bar(offset, np.nan_to_num(values), width, label=bar.name)
        if bar.intervals is not None:
            bounds = 100 * np.array([[np.nan if b is None else b for b in pair] for pair in bar.intervals],
                                    dtype=np.float64)
            ax.vlines(offset, bounds[:, 0], bounds[:, 1], color="black", lw=1.2)  # low to high, as measured
    ax.set_xticks(x, groups, rotation=30, ha="right", fontsize="small")
    low, high = group_axis_limits(bars)
    ax.set_ylim(low, high)
    ax.set_ylabel("group top-1 accuracy (%)" + (f"\naxis from {low:g}, not 0" if low > 0 else ""))
    title = "group accuracy" + (", bootstrap intervals" if bars[0].intervals is not None else "")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    # below the axes, so that it never covers a bar
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(len(bars), 3), fontsize="small",
              frameon=False)


GROUP_AXIS_MARGIN = 0.25
"""Room above and below the group bars and their intervals, as a fraction of the range they span."""


def group_axis_limits(bars: Sequence[GroupBars]) -> tuple[float, float]:
    """The accuracy axis (%) of the group panel: the range of every value and interval bound, with a margin
    of :data:`GROUP_AXIS_MARGIN` of that range (at least 1 pp), within [0, 100]. Differences of a few points
    between methods near 70% stay visible instead of being flattened by an axis from 0."""
    points = [100 * v for bar in bars for v in bar.values if v is not None]
    points += [100 * b for bar in bars for pair in (bar.intervals or []) for b in pair if b is not None]
    points = [p for p in points if np.isfinite(p)]
    if not points:
        return 0.0, 100.0
    low, high = min(points), max(points)
    margin = max(GROUP_AXIS_MARGIN * (high - low), 1.0)
    return max(0.0, np.floor(low - margin)), min(100.0, np.ceil(high + margin))


@dataclass
class Series:
    """One line of :func:`setting_figure`: a value (and its error bar) per x position."""

    name: str
    mean: np.ndarray
    std: np.ndarray


def setting_figure(path: str | Path, x_values: Sequence[Any], x_label: str, y_label: str,
                   series: Sequence[Series]) -> None:
    """A metric against a setting (e.g. shots) per method, with error bars of one std.

    Numeric positive settings spanning a factor of 4 or more (1, 2, 4, 8, 16 shots) get a log2
    axis; other settings are placed at equal spacing with their values as tick labels.
    """
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_values)
    if numeric:
        x = np.asarray(x_values, dtype=np.float64)
        if (x > 0).all() and x.max() >= 4 * x.min():
            ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x_values])
        ax.minorticks_off()
    else:
        x = np.arange(len(x_values), dtype=np.float64)
        ax.set_xticks(x, [str(v) for v in x_values])
    for line in series:
        ax.errorbar(x, line.mean, yerr=np.nan_to_num(line.std), marker="o", ms=4, capsize=3, label=line.name)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title("mean over runs; error bars: one sample standard deviation", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    _save_png(fig, path)
