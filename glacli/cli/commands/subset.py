"""``gla subset``: class-balanced few-shot splits of a features (or logits) file, no re-extraction."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from glacli.cli.app import JsonFileOutput, JsonOutput, app, emit_json, out, output_option, output_path_option, reporting
from glacli.services.subset import subset_file

Output = output_option("TRAIN.h5", "The training split")


@app.command("subset")
def subset_command(
    source: Annotated[Path, typer.Argument(help="A features (or logits) file with labels.", show_default=False)],
    shots: Annotated[int, typer.Option("--shots", help="Training rows per class.", show_default=False)],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random order within each class.",
                                      show_default=False)],
    output: Output,
    val_shots: Annotated[int, typer.Option("--val-shots", help="Validation rows per class (needs --val-out).")] = 0,
    val_out: output_path_option("--val-out", "VAL.h5", "The validation split.") = None,
    rest_out: output_path_option("--rest-out", "REST.h5", "Every row in neither split (e.g. the test set).") = None,
    allow_fewer: Annotated[bool, typer.Option(
        "--allow-fewer", help="A class with too few rows gives what it has (validation first) instead of stopping "
                              "with an error.")] = False,
    json_output: JsonOutput = False,
    json_out: JsonFileOutput = None,
) -> None:
    """Draw a deterministic, class-balanced few-shot split from a features file.

    Within each class rows are ordered by a seeded hash of their id, so a reordered file gives
    the same split, and `gla extract --shots K --seed S` keeps exactly this command's K-shot
    training rows (with no --val-shots). Validation rows come first, so they do not change with
    --shots; for one seed the K-shot training set is contained in the K'-shot one (K < K').
    Outputs keep the input's rows in their original order, its dtype, ids, labels, classnames
    and attributes, and add shots, val_shots, seed and split; their parents are the input.

    Example:

      gla subset train_feats.h5 --shots 16 --seed 1 -o train16.h5 --val-shots 4 --val-out val4.h5 --rest-out test.h5
    """
    with reporting() as reporter:
        summary = subset_file(source, output, shots=shots, seed=seed, val_shots=val_shots, val_out=val_out,
                              rest_out=rest_out, allow_fewer=allow_fewer, reporter=reporter)
    if emit_json(summary, json_output, json_out):
        return
    table = Table(title=f"gla subset: {source} (shots {shots}, val shots {val_shots}, seed {seed})")
    for column in ("split", "rows", "per class (min-max)", "file"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for row in summary["splits"]:
        table.add_row(row["split"], str(row["rows"]), f"{row['min_per_class']}-{row['max_per_class']}", row["file"])
    out.print(table)
