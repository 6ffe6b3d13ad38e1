"""``report``: many evaluate results documents -> one methods x settings table (Markdown) and a plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from glacli.base.types import Reporter
from glacli.core import report
from glacli.core.metrics import metric_info
from glacli.io.outputs import check_output_path, write_text_atomic
from glacli.io.plots import Series, setting_figure
from glacli.io.results_json import load_document, read_records

DEFAULT_COLS = "shots"
"""The column key when none is given and the results have it: the shot count of few-shot runs."""


def report_files(results: list[Path], output: Path, *, plot: Path | None = None, metric: str = "top1",
                 rows: str = report.METHOD_KEY, cols: str | None = None, baseline: str | None = None,
                 reporter: Reporter = Reporter()) -> tuple[report.ReportTable, report.ReportTable | None]:
    """Pool the results of ``results`` into a table of ``metric`` (rows x cols, mean ± std over the
    rest), and with ``baseline`` a table of the paired differences to it; write them to ``output``
    as Markdown, and the first as a figure to ``plot``."""
    check_output_path(output)
    if plot is not None:
        check_output_path(plot)
    records = [record for path in results for record in read_records(load_document(path), str(path))]
    if cols is None and any(DEFAULT_COLS in r.keys for r in records):
        cols = DEFAULT_COLS
    table = report.aggregate(records, metric, rows, cols)
    difference = report.differences(records, metric, baseline, rows, cols) if baseline is not None else None
    write_text_atomic(output, report.to_markdown(table, [str(p) for p in results], difference))
    if plot is not None:
        _plot(table, plot)
    reporter.message(f"wrote {output}" + (f" and {plot}" if plot else ""))
    return table, difference


def _plot(table: report.ReportTable, path: Path) -> None:
    info = metric_info(table.metric)
    scale = 100.0 if info.percent else 1.0
    series = []
    for row in table.rows:
        cells = [table.cells.get((row, col)) for col in table.cols]
        series.append(Series(str(row), scale * np.array([c.mean if c else np.nan for c in cells]),
                             scale * np.array([c.std if c else np.nan for c in cells])))
    setting_figure(path, table.cols, table.col_key or "", info.label, series)
