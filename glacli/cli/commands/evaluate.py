"""``gla evaluate``: compare logits files on the same labelled samples (table, results JSON, figure)."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from glacli.cli.app import DeviceOption, JsonFileOutput, app, fail, out, output_path_option, reporting
from glacli.core.metrics import FEW_SHOT_BELOW, MANY_SHOT_ABOVE, format_metric, metric_info
from glacli.io.results_json import dumps
from glacli.services.evaluate import BootstrapOptions, ShotThresholds, evaluate_files


PlotOutput = output_path_option("--plot", "OUT.png", "Per-class accuracy by class rank, a reliability diagram, "
                                                    "and the group accuracies with their intervals.")


@app.command("evaluate")
def evaluate_command(
    logits: Annotated[list[Path], typer.Argument(help="Logits files with labels, all on the same samples.",
                                                 show_default=False)],
    prior: Annotated[Path | None, typer.Option(
        "--prior", help="Prior file: adds head/medium/tail accuracy (thirds of classes ranked by q).")] = None,
    train: Annotated[Path | None, typer.Option(
        "--train", help="Training features file: adds many/medium/few-shot accuracy, pooled over samples "
                        "and as the mean of class accuracies.")] = None,
    many_shot_above: Annotated[int, typer.Option(
        "--many-shot-above", help="Many-shot classes have more training images than this.")] = MANY_SHOT_ABOVE,
    few_shot_below: Annotated[int, typer.Option(
        "--few-shot-below", help="Few-shot classes have fewer training images than this.")] = FEW_SHOT_BELOW,
    target_prior: Annotated[Path | None, typer.Option(
        "--target-prior", metavar="TARGET.h5", help="A label distribution from gla estimate-target: reports its "
                                                    "L1 and max error against the test labels' proportions.")] = None,
    resamples: Annotated[int, typer.Option(
        "--bootstrap", metavar="N", help="Bootstrap N resamples of the test rows (e.g. 1000; 0: none): "
                                         "percentile intervals of every metric, the same resamples for "
                                         "every file.")] = 0,
    seed: Annotated[int, typer.Option("--bootstrap-seed", help="Seed of the resamples.")] = 0,
    confidence: Annotated[float, typer.Option("--confidence", help="Coverage of the intervals.")] = 0.95,
    stratified: Annotated[bool, typer.Option(
        "--stratified/--plain", help="Resample rows within each class (class counts fixed, as for a test set "
                                     "with a fixed number of images per class) or from all rows.")] = True,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", metavar="NAME", help="With --bootstrap: the paired difference of every other file to "
                                           "this one, with its interval.")] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the results JSON on stdout instead of the table.")] = False,
    json_out: JsonFileOutput = None,
    plot: PlotOutput = None,
    names: Annotated[list[str] | None, typer.Option(
        "--name", help="Name of each file in order (the method name in reports); default: file stems.")] = None,
    tags: Annotated[list[str] | None, typer.Option(
        "--tag", metavar="KEY=VALUE", help="Setting of this run stored in the JSON, e.g. --tag shots=4 "
                                           "--tag seed=1 (numbers are stored as numbers).")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Compare logits files: top-1, top-5, mean per-class accuracy, NLL, ECE and group accuracies.

    Intervals (--bootstrap) cover the sampling of the test rows only, not the choice of shots,
    seeds or q.

    Example:

        gla evaluate zs.h5 zs_debiased.h5 gla.h5 --prior prior.h5 --train train.h5 \\
            --name zero-shot --name debiased --name GLA --tag shots=16 --tag seed=1 \\
            --bootstrap 1000 --baseline zero-shot --json-out results.json --plot results.png
    """
    _refuse_old_json_form(logits, json_output)
    with reporting() as reporter:
        evaluation = evaluate_files(
            logits, prior=prior, train=train, target_prior=target_prior, names=names, tags=tags, device=device,
            resampling=BootstrapOptions(resamples, seed, confidence, stratified, baseline),
            shots=ShotThresholds(many_shot_above, few_shot_below), json_path=json_out, plot=plot,
            reporter=reporter)
    if json_output:
        sys.stdout.write(dumps(evaluation.document))
        return
    document = evaluation.document
    sizes = ", ".join(f"{metric_info(g).short} {len(c)}" for g, c in evaluation.groups.items())
    out.print(_table(document, f"{evaluation.n_samples} samples, {evaluation.n_classes} classes; "
                               "accuracies and ECE in %"))
    if sizes:
        out.print(f"classes per group: {sizes}")
    if document["bootstrap"]:
        out.print(f"±: half the width of the {_interval_name(document['bootstrap'])}")
        if any("vs_baseline" in r for r in document["results"]):
            out.print(_difference_table(document))
            out.print(escape("[low, high]: the paired interval of the difference; *: it excludes 0"))
    if document["target_prior"] is not None:
        target = document["target_prior"]
        out.print(f"target prior {escape(target['path'])} ({target['method']}) against the label proportions of the "
                  f"test rows: L1 {target['l1']:.4f}, max abs error {target['max_abs_error']:.4f}")


def _refuse_old_json_form(logits: list[Path], json_output: bool) -> None:
    """``--json FILE`` (a path in gla before 0.2) now reads as the flag and FILE as one more logits file."""
    old = next((path for path in logits if path.suffix == ".json" or str(path) == "-"), None)
    if json_output and old is not None:
        fail(f"--json prints the results on stdout and takes no file: write them with --json-out {old}"
             if str(old) != "-" else "--json prints the results on stdout and takes no '-': drop the '-'")


def _table(document: dict[str, Any], title: str) -> Table:
    """One row per metric, one column per file (metrics outnumber files, so this fits a terminal)."""
    columns = {r["name"]: {key: _cell(key, value, r.get("ci", {}).get(key)) for key, value in r["metrics"].items()}
               for r in document["results"]}
    return _rich_table(title, _shift_order(document, columns))


def _difference_table(document: dict[str, Any]) -> Table:
    """Each file minus the baseline, with the paired interval; ``*`` where it excludes 0."""
    columns = {r["name"]: {key: _difference(key, entry) for key, entry in r["vs_baseline"].items()}
               for r in document["results"] if "vs_baseline" in r}
    return _rich_table(f"difference to {document['bootstrap']['baseline']} (pp; NLL in nats)",
                       _shift_order(document, columns))


def _shift_order(document: dict[str, Any], columns: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Under label shift (a target prior given, or adapted to), mean per-class accuracy goes right after
    top-1: top-1 then rewards predicting the frequent classes, and only the two together tell."""
    if not document.get("label_shift"):
        return columns
    first = ("top1", "mean_per_class")
    return {name: {**{k: cells[k] for k in first if k in cells}, **{k: v for k, v in cells.items() if k not in first}}
            for name, cells in columns.items()}


def _interval_name(options: dict[str, Any]) -> str:
    return (f"{100 * options['confidence']:g}% percentile interval ({options['resamples']} "
            f"{options['sampling']} bootstrap resamples of the test rows)")


def _cell(key: str, value: float, interval: Any) -> str:
    text = (format_metric(key, value) if _finite(value) else "") or "-"
    if interval is None or not all(_finite(b) for b in interval):
        return text
    return f"{text} ±{format_metric(key, (interval[1] - interval[0]) / 2)}"


def _difference(key: str, entry: dict[str, Any]) -> str:
    difference, (low, high) = entry["difference"], entry["ci"]
    if not (_finite(difference) and _finite(low) and _finite(high)):
        return "-"
    sign = lambda v: ("+" if v > 0 else "") + format_metric(key, v)
    mark = "*" if low > 0 or high < 0 else ""
    return f"{sign(difference)}{mark} [{sign(low)}, {sign(high)}]"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _rich_table(title: str, columns: dict[str, dict[str, str]]) -> Table:
    """``columns``: per file, its cell text per metric key; prints ``title`` on its own line."""
    out.print(Text(title, style="italic"), soft_wrap=True)  # above, not as the table's title: never wrapped to it
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("metric", no_wrap=True)
    for name in columns:
        table.add_column(escape(name), justify="right")
    for key in next(iter(columns.values())):
        table.add_row(metric_info(key).short, *(escape(column[key]) for column in columns.values()))
    return table
