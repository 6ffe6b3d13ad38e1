"""``gla report``: many ``gla evaluate --json-out`` results -> one Markdown table and a plot."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from glacli.cli.app import JsonFileOutput, JsonOutput, app, emit_json, out, output_option, output_path_option, reporting
from glacli.core import report
from glacli.core.metrics import METRICS
from glacli.services.report import DEFAULT_COLS, report_files

Output = output_option("REPORT.md", "Markdown report")


@app.command("report")
def report_command(
    results: Annotated[list[Path], typer.Argument(help="JSON files written by 'gla evaluate --json-out'.",
                                                  show_default=False)],
    output: Output,
    plot: output_path_option("--plot", "OUT.png", "The metric against the column setting, one line per row, "
                                                  "error bars of one sample std.") = None,
    metric: Annotated[str, typer.Option("--metric", help=f"One of: {', '.join(METRICS)} (top{{k}} for another k)."
                                        )] = "top1",
    rows: Annotated[str, typer.Option("--rows", help="Key whose values are the rows: 'method' or a tag.")
                    ] = report.METHOD_KEY,
    cols: Annotated[str | None, typer.Option(
        "--cols", help=f"Tag whose values are the columns; default: {DEFAULT_COLS} where the results "
                       "have it, else a single column.", show_default=False)] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", metavar="NAME", help="Also tabulate each method minus this one, paired by tags (seeds): "
                                           "mean ± std, and in how many runs the bootstrap interval of the "
                                           "difference excludes 0 (evaluate --bootstrap --baseline NAME).")] = None,
    json_output: JsonOutput = False,
    json_out: JsonFileOutput = None,
) -> None:
    """Aggregate evaluate results into a methods x settings table: mean ± std over the other tags (seeds).

    Each result's method is its evaluate --name; settings and seeds come from evaluate --tag.

    Example:

        for s in 1 2 4; do for seed in 1 2 3; do
          gla evaluate zs.h5 lp_${s}_${seed}.h5 gla_${s}_${seed}.h5 \\
              --name zero-shot --name probe --name GLA --bootstrap 1000 --baseline zero-shot \\
              --tag shots=$s --tag seed=$seed --json-out res_${s}_${seed}.json
        done; done
        gla report res_*.json -o report.md --plot report.png --cols shots --baseline zero-shot
    """
    with reporting() as reporter:
        table, difference = report_files(results, output, plot=plot, metric=metric, rows=rows, cols=cols,
                                         baseline=baseline, reporter=reporter)
    if json_output or json_out is not None:
        payload = report.to_json(table)
        if difference is not None:
            payload["differences"] = report.to_json(difference)
        if emit_json(payload, json_output, json_out):
            return
    out.print(_rich_table(table))
    if difference is not None:
        out.print(_rich_table(difference))


def _rich_table(table: report.ReportTable) -> Table:
    show_n = len(report.run_counts(table)) > 1
    rich_table = Table(title=escape(report.caption(table)), title_justify="left")
    rich_table.add_column(table.row_key)
    for col in table.cols:
        rich_table.add_column(report.column_header(table, col), justify="right")
    for row in table.rows:
        rich_table.add_row(escape(str(row)), *(escape(report.format_cell(table, table.cells.get((row, col)), show_n))
                                               for col in table.cols))
    return rich_table
