"""``gla fit``: a linear-probe head on cached features (multinomial logistic regression, L-BFGS)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from glacli.app import DeviceOption, JsonOutput, app, out, output_option, print_fields, print_json, reporting, warn
from glacli.probe import SolverOptions
from glacli.services.fit import DEFAULT_MEMORY_GIB, fit_head
from glacli.validation import require_positive

Output = output_option("HEAD.h5", "Head file")


@app.command("fit")
def fit_command(
    train: Annotated[Path, typer.Argument(metavar="TRAIN_FEATURES.h5", help="Labelled training features.",
                                          show_default=False)],
    output: Output,
    val: Annotated[Path | None, typer.Option(
        "--val", metavar="VAL_FEATURES.h5",
        help="Labelled validation features: choose the penalty on them, then calibrate the temperature by NLL.")
    ] = None,
    wd: Annotated[str | None, typer.Option(
        "--wd", metavar="FLOAT",
        help="Fix the L2 penalty (objective: mean CE + wd/2 ||W||^2; scikit-learn's C = 1/(wd N)) "
             "instead of searching it on --val.")] = None,
    init: Annotated[Path | None, typer.Option(
        "--init", metavar="HEAD.h5", help="Start from this head (e.g. a zero-shot head); saves iterations.")] = None,
    balanced: Annotated[bool, typer.Option(
        "--balanced", help="Class-balanced (logit-adjusted) loss for long-tailed training sets.")] = False,
    device: DeviceOption = "auto",
    float64: Annotated[bool, typer.Option(
        "--float64", help="Compute in float64 (slower; for exact comparisons).")] = False,
    max_iter: Annotated[int, typer.Option("--max-iter", help="L-BFGS iterations at most, per fit.")] = 1000,
    tol: Annotated[float, typer.Option(
        "--tol", help="Relative tolerance of the final fit: stop when ||grad|| <= tol * wd * ||W|| "
                      "(about tol from the optimum).")] = SolverOptions.tol,
    memory_gib: Annotated[float, typer.Option(
        "--memory", metavar="GIB",
        help="Features larger than this (in the compute dtype) are streamed from disk on every pass "
             "instead of held in memory.")] = DEFAULT_MEMORY_GIB,
    json_output: JsonOutput = False,
) -> None:
    """Fit a linear-probe head (multinomial logistic regression, full-batch L-BFGS) on cached features.

    With --val the penalty is chosen on the validation set: a warm-started path, then a finer search.

    This is the CLIP linear-probe protocol over a log-spaced grid.

    The chosen head is refitted and its temperature calibrated on --val by NLL.

    Example:

        gla fit train.h5 --val val.h5 -o linear_head.h5

        gla fit train.h5 --wd 1e-4 --init zeroshot_head.h5 -o linear_head.h5
    """
    penalty = None if wd is None else require_positive(wd, "--wd")
    with reporting(transient=json_output) as reporter:
        report = fit_head(train, output, val=val, wd=penalty, init=init, balanced=balanced, device=device,
                          float64=float64, max_iter=max_iter, tol=tol, memory_gib=memory_gib, reporter=reporter)
    for warning in report["warnings"]:
        warn(warning)
    if json_output:
        print_json(report)
    else:
        _print_fit(report)


def _print_fit(report: dict[str, Any]) -> None:
    if report["path"]:
        table = Table(title="Penalty search (validation)")
        for column in ("wd", "C (sklearn)", "val top-1 %", "val NLL", "iterations", "stage"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for point in sorted(report["path"], key=lambda p: -p["wd"]):
            chosen = point["wd"] == report["wd"]
            style = "bold green" if chosen else None
            table.add_row(f"{point['wd']:.3g}", f"{1.0 / (point['wd'] * report['n_rows']):.3g}",
                          f"{100 * point['val_accuracy']:.2f}", f"{point['val_nll']:.4f}", str(point["iterations"]),
                          point["stage"] + (" (chosen)" if chosen else ""), style=style)
        out.print(table)
    fields = [("rows x features -> classes", f"{report['n_rows']} x {report['n_features']} -> {report['n_classes']}"),
              ("penalty wd (sklearn C)", f"{report['wd']:.3g} ({report['c_equivalent']:.3g})")]
    if report["val_accuracy"] is not None:
        fields += [("val top-1 %", f"{100 * report['val_accuracy']:.2f}"),
                   ("val NLL (T = 1 -> calibrated)", f"{report['val_nll_uncalibrated']:.4f} -> {report['val_nll']:.4f}")]
    fields += [("temperature", f"{report['temperature']:.4g}"),
               ("final loss", f"{report['final_loss']:.6g}"),
               ("iterations", f"{report['iterations']}{'' if report['converged'] else ' (not converged)'}"),
               ("balanced loss", "yes" if report["balanced"] else "no"),
               ("device", report["device"])]
    print_fields(f"Linear head -> {report['output']}", fields)
