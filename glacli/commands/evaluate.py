"""``gla evaluate``: compare logits files on the same labelled samples (table, results JSON, figure)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from glacli.app import DeviceOption, app, out, reporting
from glacli.metrics import format_metric, metric_info
from glacli.services.evaluate import STDOUT, dumps, evaluate_files
from glacli.types import Evaluation


@app.command("evaluate")
def evaluate_command(
    logits: Annotated[list[Path], typer.Argument(help="Logits files with labels, all on the same samples.",
                                                 show_default=False)],
    prior: Annotated[Path | None, typer.Option(
        "--prior", help="Prior file: adds head/medium/tail accuracy (thirds of classes ranked by q).")] = None,
    train: Annotated[Path | None, typer.Option(
        "--train", help="Training features file: adds many/medium/few-shot accuracy "
                        "(>100 / 20-100 / <20 training images).")] = None,
    json_output: Annotated[str | None, typer.Option(
        "--json", metavar="OUT.json", help="Write the results as JSON ('-' = stdout, instead of the table).")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="OUT.png", help="Per-class accuracy by class rank and a reliability diagram.")] = None,
    names: Annotated[list[str] | None, typer.Option(
        "--name", help="Name of each file in order (the method name in reports); default: file stems.")] = None,
    tags: Annotated[list[str] | None, typer.Option(
        "--tag", metavar="KEY=VALUE", help="Setting of this run stored in the JSON, e.g. --tag shots=4 "
                                           "--tag seed=1 (numbers are stored as numbers).")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Compare logits files: top-1, top-5, mean per-class accuracy, NLL, ECE and group accuracies.

    Example:

        gla evaluate zs.h5 zs_debiased.h5 gla.h5 --prior prior.h5 --train train.h5 \\
            --name zero-shot --name debiased --name GLA --tag shots=16 --tag seed=1 \\
            --json results.json --plot results.png
    """
    with reporting() as reporter:
        evaluation = evaluate_files(logits, prior=prior, train=train, names=names, tags=tags, device=device,
                                    json_path=json_output, plot=plot, reporter=reporter)
    if json_output == STDOUT:
        sys.stdout.write(dumps(evaluation.document))
    else:
        out.print(_table(evaluation))


def _table(evaluation: Evaluation) -> Table:
    summaries = [result["metrics"] for result in evaluation.document["results"]]
    keys = list(summaries[0])
    sizes = ", ".join(f"{metric_info(g).short} {len(c)}" for g, c in evaluation.groups.items())
    table = Table(title=f"{evaluation.n_samples} samples, {evaluation.n_classes} classes; accuracies and ECE in %"
                        + (f"\nclasses per group: {sizes}" if sizes else ""),
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=0, show_edge=False)
    rows = [[format_metric(key, value) or "-" for key, value in summary.items()] for summary in summaries]
    table.add_column("file", no_wrap=True)
    for j, key in enumerate(keys):
        # numbers never truncate; headers wrap instead, so 11 columns fit 80 characters
        table.add_column(metric_info(key).short, justify="right", min_width=max(len(row[j]) for row in rows))
    for name, row in zip(evaluation.names, rows):
        table.add_row(name, *row)
    return table
