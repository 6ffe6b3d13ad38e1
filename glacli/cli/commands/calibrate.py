"""``gla calibrate``: temperature scaling of a logits file, fitted on labelled validation logits."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glacli.cli.app import JsonFileOutput, JsonOutput, app, emit_json, output_option, print_fields, reporting
from glacli.services.calibrate import METHODS, calibrate_file

Output = output_option("OUT.h5", "Calibrated logits file")


@app.command("calibrate")
def calibrate_command(
    logits: Annotated[Path, typer.Argument(metavar="LOGITS.h5", help="Logits to calibrate (any source).",
                                           show_default=False)],
    val: Annotated[Path, typer.Option(
        "--val", metavar="VAL_LOGITS.h5", help="Labelled logits of the same model on held-out data: T is fitted "
                                               "on them.", show_default=False)],
    output: Output,
    method: Annotated[str, typer.Option(
        "--method", metavar="|".join(METHODS),
        help="nll: minimise validation NLL; confidence: mean max-probability = accuracy.")] = "nll",
    json_output: JsonOutput = False,
    json_out: JsonFileOutput = None,
) -> None:
    """Temperature scaling: fit T on --val, write LOGITS / T (streamed) and record the total temperature.

    The recorded temperature is the total applied: T times any temperature LOGITS already had.

    LOGITS and --val must have the same classnames and the same temperature already applied.

    Example:

        gla calibrate imported_test.h5 --val imported_val.h5 -o calibrated_test.h5
    """
    with reporting() as reporter:
        report = calibrate_file(logits, val, output, method, reporter)
    if emit_json(report, json_output, json_out):
        return
    print_fields(f"Temperature scaling ({method}) -> {output}", [
        ("fitted T (on --val)", f"{report['temperature']:.4g}"),
        ("total temperature recorded", f"{report['total_temperature']:.4g}"),
        ("val top-1 %", f"{100 * report['val_accuracy']:.2f}"),
        ("val NLL before -> after", f"{report['val_nll_before']:.4f} -> {report['val_nll_after']:.4f}")])
