"""``gla report``: many ``gla evaluate --json`` results -> one Markdown table and a plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from glacli import report, store
from glacli.app import app, err, fail, out, print_json
from glacli.metrics import METRICS
from glacli.plots import Series, setting_figure

DEFAULT_COLS = "shots"


@app.command("report")
def report_command(
    results: Annotated[list[Path], typer.Argument(help="JSON files written by 'gla evaluate --json'.",
                                                  show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="REPORT.md", help="Markdown report to write.")],
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="OUT.png", help="The metric against the column setting, one line per row, "
                                          "error bars of one sample std.")] = None,
    metric: Annotated[str, typer.Option("--metric", help=f"One of: {', '.join(METRICS)}.")] = "top1",
    rows: Annotated[str, typer.Option("--rows", help="Key whose values are the rows: 'method' or a tag.")]
        = report.METHOD_KEY,
    cols: Annotated[str | None, typer.Option(
        "--cols", help=f"Tag whose values are the columns; default: {DEFAULT_COLS} where the results "
                       "have it, else a single column.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the aggregated table as JSON on stdout.")] = False,
) -> None:
    """Aggregate evaluate results into a methods x settings table: mean ± std over the other tags (seeds).

    Each result's method is its evaluate --name; settings and seeds come from evaluate --tag.

    Example:

        for s in 1 2 4; do for seed in 1 2 3; do
          gla evaluate zs.h5 lp_${s}_${seed}.h5 gla_${s}_${seed}.h5 \\
              --name zero-shot --name probe --name GLA \\
              --tag shots=$s --tag seed=$seed --json res_${s}_${seed}.json
        done; done
        gla report res_*.json -o report.md --plot report.png --cols shots
    """
    store.check_output_path(output)
    if plot is not None:
        store.check_output_path(plot)
    records = [record for path in results for record in report.records_from_document(_load(path), str(path))]
    if cols is None and any(DEFAULT_COLS in r.keys for r in records):
        cols = DEFAULT_COLS
    table = report.aggregate(records, metric, rows, cols)

    store.write_text_atomic(output, report.to_markdown(table, [str(p) for p in results]))
    if plot is not None:
        _plot(table, plot)
    if as_json:
        print_json(report.to_json(table))
    else:
        out.print(_rich_table(table))
    err.print(f"wrote {output}" + (f" and {plot}" if plot else ""))


def _load(path: Path) -> Any:
    if not path.is_file():
        fail("no such file" if not path.exists() else "is not a file", str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        fail("is not UTF-8 text (expected evaluate's JSON)", str(path))
    except json.JSONDecodeError as exc:
        fail(f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", str(path))


def _plot(table: report.ReportTable, path: Path) -> None:
    scale = 100.0 if METRICS[table.metric].percent else 1.0
    series = []
    for row in table.rows:
        cells = [table.cells.get((row, col)) for col in table.cols]
        series.append(Series(str(row), scale * np.array([c.mean if c else np.nan for c in cells]),
                             scale * np.array([c.std if c else np.nan for c in cells])))
    setting_figure(path, table.cols, table.col_key or "", METRICS[table.metric].label, series)


def _rich_table(table: report.ReportTable) -> Table:
    show_n = len(report.run_counts(table)) > 1
    rich_table = Table(title=report.caption(table), title_justify="left")
    rich_table.add_column(table.row_key)
    for col in table.cols:
        rich_table.add_column(report.column_header(table, col), justify="right")
    for row in table.rows:
        rich_table.add_row(str(row), *(report.format_cell(table, table.cells.get((row, col)), show_n)
                                       for col in table.cols))
    return rich_table
