"""Aggregation of evaluate results into a methods x settings table, and its Markdown (pure; no I/O).

Each result of an evaluate document is one :class:`~glacli.types.Record` (read by
:func:`glacli.services.evaluate.read_records`): its method is the result's ``name`` and its other
keys are the document's ``tags`` (e.g. ``shots``, ``seed``). A table picks one key for rows and
one for columns; the records that share a cell (typically the seeds) are summarised by their
mean and their sample standard deviation (``ddof = 1``; none for a single run). Two records in
one cell that agree on every key are refused as duplicates.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from glacli.errors import GlaInputError
from glacli.metrics import METRICS, format_metric, is_metric, metric_info
from glacli.types import Record

METHOD_KEY = "method"
NO_COLUMN = "all"


@dataclass
class Cell:
    """The runs of one (row, column): their values, mean and sample std (NaN for one run)."""

    values: list[float]
    sources: list[str]

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

    cols = sorted({col for _, col in cells}, key=_sort_key)
    pooled_keys = {k for r in records for k in r.keys} - {row_key, col_key}
    varying = sorted(k for k in pooled_keys
                     if len({str(r.keys.get(k)) for r in records}) > 1)
    return ReportTable(metric, row_key, col_key, rows, cols, cells, varying)


def _hint(metric: str) -> str:
    if metric.startswith("q_"):
        return " (run evaluate with --prior)"
    if metric.endswith("_shot"):
        return " (run evaluate with --train)"
    return ""


def format_cell(table: ReportTable, cell: Cell | None, show_n: bool) -> str:
    """``mean ± std`` (std omitted for a single run), ``(n=…)`` when cells differ in run count."""
    if cell is None:
        return "-"
    text = format_metric(table.metric, cell.mean)
    if cell.n > 1:
        text += f" ± {format_metric(table.metric, cell.std)}"
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
    return (f"{metric_info(table.metric).label}: mean ± sample standard deviation (ddof = 1) over "
            f"{runs} run(s) per cell{over}; a cell with one run shows its value alone.")


def to_markdown(table: ReportTable, sources: Sequence[str]) -> str:
    """A paper-style Markdown table with a caption and the list of input files."""
    show_n = len(run_counts(table)) > 1
    header = [f"{table.row_key}"] + [column_header(table, c) for c in table.cols]
    lines = [f"# {metric_info(table.metric).label}", "", caption(table), "",
             "| " + " | ".join(header) + " |",
             "| " + " | ".join([":--"] + ["--:"] * len(table.cols)) + " |"]
    for row in table.rows:
        cells = [format_cell(table, table.cells.get((row, col)), show_n) for col in table.cols]
        lines.append("| " + " | ".join([str(row), *cells]) + " |")
    lines += ["", "Inputs: " + ", ".join(f"`{s}`" for s in sources), ""]
    return "\n".join(lines)


def to_json(table: ReportTable) -> dict[str, Any]:
    """The aggregated table as plain data (``--json``); std is null for single runs."""
    return {
        "metric": table.metric, "rows": table.row_key, "cols": table.col_key, "varying": table.varying,
        "cells": [{"row": row, "col": col, "n": cell.n, "mean": cell.mean,
                   "std": cell.std if cell.n > 1 else None, "values": cell.values}
                  for (row, col), cell in table.cells.items()],
    }
