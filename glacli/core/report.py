"""Aggregation of evaluate results into a methods x settings table, and its Markdown (pure; no I/O).

Each result of an evaluate document is one :class:`~glacli.base.types.Record` (read by
:func:`glacli.io.results_json.read_records`): its method is the result's ``name`` and its other
keys are the document's ``tags`` (e.g. ``shots``, ``seed``). A table picks one key for rows and
one for columns; the records that share a cell (typically the seeds) are summarised by their
mean and their sample standard deviation (``ddof = 1``; none for a single run). Two records in
one cell that agree on every key are refused as duplicates.

Against a baseline method (:func:`differences`), each record is paired with the baseline's record
of the same tags (same document settings, so the same test rows) and replaced by the difference;
where evaluate bootstrapped that difference, its interval comes along, and a cell counts the runs
whose interval excludes 0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Record
from glacli.core.metrics import METRICS, format_metric, is_metric, metric_info

METHOD_KEY = "method"
NO_COLUMN = "all"


@dataclass
class Cell:
    """The runs of one (row, column): their values, mean and sample std (NaN for one run), and
    each run's bootstrap interval where it has one."""

    values: list[float]
    sources: list[str]
    intervals: list[tuple[float, float] | None] = field(default_factory=list)

    @property
    def with_interval(self) -> int:
        return sum(i is not None for i in self.intervals)

    @property
    def excluding_zero(self) -> int:
        """Runs whose interval lies wholly above or below 0."""
        return sum(i is not None and (i[0] > 0 or i[1] < 0) for i in self.intervals)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else float("nan")


@dataclass
class ReportTable:
    metric: str
    row_key: str
    col_key: str | None
    rows: list[Any]
    cols: list[Any]
    cells: dict[tuple[Any, Any], Cell]
    varying: list[str] = field(default_factory=list)
    """Keys that differ between the runs pooled in a cell (e.g. ``seed``)."""
    baseline: str | None = None
    """Set for a table of differences to this method."""


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _fmt_keys(keys: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in keys.items())


def aggregate(records: Sequence[Record], metric: str, row_key: str = METHOD_KEY,
              col_key: str | None = None) -> ReportTable:
    """Pool ``records`` into cells by ``row_key`` x ``col_key`` (``None``: one column).

    Rows keep the order in which they first appear; columns are sorted (numbers numerically).
    """
    if not is_metric(metric):
        raise GlaInputError(f"--metric: unknown metric {metric!r} (choose from {', '.join(METRICS)}, or top{{k}})")
    if not records:
        raise GlaInputError("no results to report")
    for option, key in (("--rows", row_key), ("--cols", col_key)):
        if key is not None and not any(key in r.keys for r in records):
            present = sorted({k for r in records for k in r.keys})
            raise GlaInputError(f"{option}: no result has the key {key!r} (keys: {', '.join(present)})")
    if col_key == row_key:
        raise GlaInputError(f"--rows and --cols are both {row_key!r}")

    cells: dict[tuple[Any, Any], Cell] = {}
    seen: dict[tuple[Any, ...], str] = {}
    rows: list[Any] = []
    for record in records:
        for key in (row_key, col_key):
            if key is not None and key not in record.keys:
                raise GlaInputError(f"result {record.keys[METHOD_KEY]!r} has no {key!r} tag "
                                    f"(run evaluate with --tag {key}=...)", record.source)
        value = record.metrics.get(metric)
        if metric not in record.metrics:
            raise GlaInputError(f"result {record.keys[METHOD_KEY]!r} has no metric {metric!r}"
                                + _hint(metric), record.source)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise GlaInputError(f"result {record.keys[METHOD_KEY]!r}: metric {metric!r} is {value!r}, "
                                "not a number (a group without test samples?)", record.source)
        identity = tuple(sorted((k, str(v)) for k, v in record.keys.items()))
        if identity in seen:
            raise GlaInputError(f"duplicate result {_fmt_keys(record.keys)} (also in {seen[identity]})",
                                record.source)
        seen[identity] = record.source
        row = record.keys[row_key]
        col = record.keys[col_key] if col_key is not None else NO_COLUMN
        if row not in rows:
            rows.append(row)
        cell = cells.setdefault((row, col), Cell([], []))
        cell.values.append(float(value))
        cell.sources.append(record.source)
        cell.intervals.append(_interval(record.ci.get(metric)))

    cols = sorted({col for _, col in cells}, key=_sort_key)
    pooled_keys = {k for r in records for k in r.keys} - {row_key, col_key}
    varying = sorted(k for k in pooled_keys
                     if len({str(r.keys.get(k)) for r in records}) > 1)
    return ReportTable(metric, row_key, col_key, rows, cols, cells, varying)


def _interval(value: Any) -> tuple[float, float] | None:
    """``[low, high]`` from a results document, or None where there is none (or a null bound)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return float(value[0]), float(value[1])


def differences(records: Sequence[Record], metric: str, baseline: str, row_key: str = METHOD_KEY,
                col_key: str | None = None) -> ReportTable:
    """The table of ``method - baseline`` per run: each record paired with the baseline's record of
    the same tags; the interval is evaluate's paired one where it ran with this baseline."""
    by_tags = {_tags(r): r for r in records if r.keys[METHOD_KEY] == baseline}
    if not by_tags:
        raise GlaInputError(f"--baseline: no result is named {baseline!r} "
                            f"(methods: {', '.join(dict.fromkeys(str(r.keys[METHOD_KEY]) for r in records))})")
    paired = []
    for record in records:
        if record.keys[METHOD_KEY] == baseline:
            continue
        base = by_tags.get(_tags(record))
        if base is None:
            raise GlaInputError(f"--baseline: no {baseline!r} result with the tags of {record.keys[METHOD_KEY]!r} "
                                f"({_fmt_keys(dict(_tags(record))) or 'no tags'}) to pair it with", record.source)
        value, base_value = (_number(r, metric) for r in (record, base))
        entry = record.vs_baseline.get(metric) if record.baseline == baseline else None
        ci = {metric: entry.get("ci")} if isinstance(entry, dict) else {}
        paired.append(Record(record.keys, {metric: value - base_value}, record.source, ci))
    if not paired:
        raise GlaInputError(f"--baseline: every result is {baseline!r}; there is nothing to compare")
    table = aggregate(paired, metric, row_key, col_key)
    table.baseline = baseline
    return table


def _tags(record: Record) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in record.keys.items() if k != METHOD_KEY))


def _number(record: Record, metric: str) -> float:
    value = record.metrics.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise GlaInputError(f"result {record.keys[METHOD_KEY]!r}: metric {metric!r} is {value!r}, not a number"
                            + _hint(metric), record.source)
    return float(value)


def _hint(metric: str) -> str:
    if metric.startswith("q_"):
        return " (run evaluate with --prior)"
    if metric.endswith("_shot"):
        return " (run evaluate with --train)"
    return ""


def format_cell(table: ReportTable, cell: Cell | None, show_n: bool) -> str:
    """``mean ± std`` (std omitted for a single run, whose interval is shown instead where it has
    one), ``(n=…)`` when cells differ in run count; for differences, a sign and ``k/n excl. 0``."""
    if cell is None:
        return "-"
    fmt = lambda v: ("+" if table.baseline is not None and v > 0 else "") + format_metric(table.metric, v)
    text = fmt(cell.mean)
    if cell.n > 1:
        text += f" ± {format_metric(table.metric, cell.std)}"
    elif cell.intervals[0] is not None:
        low, high = cell.intervals[0]
        text += f" [{fmt(low)}, {fmt(high)}]"
    if table.baseline is not None and cell.with_interval:
        text += f" ({cell.excluding_zero}/{cell.with_interval} excl. 0)"
    return text + (f" (n={cell.n})" if show_n else "")


def run_counts(table: ReportTable) -> set[int]:
    return {cell.n for cell in table.cells.values()}


def column_header(table: ReportTable, col: Any) -> str:
    return metric_info(table.metric).label if table.col_key is None else f"{table.col_key}={col}"


def caption(table: ReportTable) -> str:
    """What the numbers are: metric, statistic, and over which runs."""
    counts = sorted(run_counts(table))
    runs = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    over = f" (varying: {', '.join(table.varying)})" if table.varying else ""
    label = metric_info(table.metric).label
    if table.baseline is not None:
        label = (f"{label.replace('(%)', '(percentage points)')} minus {table.baseline}, paired by tags "
                 "(same test rows)")
    intervals = any(cell.with_interval for cell in table.cells.values())
    text = (f"{label}: mean ± sample standard deviation (ddof = 1) over {runs} run(s) per cell{over}; "
            "a cell with one run shows its value alone"
            + (" (with its bootstrap interval [low, high] where it has one)" if intervals else ""))
    if table.baseline is not None and intervals:
        text += ("; (k/n excl. 0): of the n runs with a bootstrap interval of the difference "
                 f"(evaluate --bootstrap --baseline {table.baseline}), k have one that excludes 0")
    return text + "."


def _markdown_table(table: ReportTable) -> list[str]:
    show_n = len(run_counts(table)) > 1
    header = [f"{table.row_key}"] + [column_header(table, c) for c in table.cols]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join([":--"] + ["--:"] * len(table.cols)) + " |"]
    for row in table.rows:
        cells = [format_cell(table, table.cells.get((row, col)), show_n) for col in table.cols]
        lines.append("| " + " | ".join([str(row), *cells]) + " |")
    return lines


def to_markdown(table: ReportTable, sources: Sequence[str], difference: ReportTable | None = None) -> str:
    """A paper-style Markdown table with a caption and the list of input files; with
    ``difference``, a second section with the paired differences to its baseline."""
    lines = [f"# {metric_info(table.metric).label}", "", caption(table), "", *_markdown_table(table)]
    if difference is not None:
        lines += ["", f"## difference to {difference.baseline}", "", caption(difference), "",
                  *_markdown_table(difference)]
    lines += ["", "Inputs: " + ", ".join(f"`{s}`" for s in sources), ""]
    return "\n".join(lines)


def to_json(table: ReportTable) -> dict[str, Any]:
    """The aggregated table as plain data (``--json``); std is null for single runs, an interval
    null where a run has none."""
    cells = []
    for (row, col), cell in table.cells.items():
        entry = {"row": row, "col": col, "n": cell.n, "mean": cell.mean,
                 "std": cell.std if cell.n > 1 else None, "values": cell.values,
                 "intervals": [list(i) if i is not None else None for i in cell.intervals]}
        if table.baseline is not None:
            entry.update(with_interval=cell.with_interval, excluding_zero=cell.excluding_zero)
        cells.append(entry)
    return {"metric": table.metric, "rows": table.row_key, "cols": table.col_key, "varying": table.varying,
            **({"baseline": table.baseline} if table.baseline is not None else {}), "cells": cells}
