"""``gla estimate-target``: the label distribution of an unlabelled test set (label shift)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from glacli.cli.app import JsonFileOutput, JsonOutput, app, emit_json, out, output_option, print_fields, reporting
from glacli.core.label_shift import DEFAULT_CONCENTRATION, DEFAULT_TOL, LOG_FLOOR
from glacli.services.estimate_target import DEFAULT_MEMORY_GIB, METHODS, estimate_target_file

Output = output_option("TARGET.h5", "Prior file holding the estimated label distribution pi_t")


@app.command("estimate-target")
def estimate_target_command(
    logits: Annotated[Path, typer.Argument(
        metavar="LOGITS.h5", help="Logits of the unlabelled set, calibrated for a uniform prior.", show_default=False)],
    output: Output,
    method: Annotated[str, typer.Option(
        "--method", metavar="|".join(METHODS),
        help="mlls: maximum likelihood over the simplex (EM fixed point, solved to a KKT gap); "
             "bbse: black-box shift estimation from --val's confusion matrix.")] = "mlls",
    val: Annotated[Path | None, typer.Option(
        "--val", metavar="VAL_LOGITS.h5", help="BBSE: labelled validation logits of the same model.")] = None,
    calibrate: Annotated[Path | None, typer.Option(
        "--calibrate", metavar="VAL_LOGITS.h5",
        help="Labelled validation logits of the same model: fit a temperature and class biases (BCTS) "
             "on them first, so the scores are calibrated for a uniform prior.")] = None,
    concentration: Annotated[float, typer.Option(
        "--concentration", metavar="A",
        help="MLLS: pseudo-counts in all of a symmetric Dirichlet prior (MAP); 0 gives the MLE, whose "
             f"zero classes are stored at log_prior = {LOG_FLOOR:.4g} (log 1e-12).")] = DEFAULT_CONCENTRATION,
    tol: Annotated[float, typer.Option("--tol", help="MLLS: stop when the float64 KKT residual is below this.")
                   ] = DEFAULT_TOL,
    max_iter: Annotated[int, typer.Option("--max-iter", help="MLLS: accelerated EM iterations at most.")] = 10000,
    memory_gib: Annotated[float, typer.Option(
        "--memory", metavar="GIB",
        help="Hold the float64 probabilities in memory when they fit this; else every pass reads the file.")
    ] = DEFAULT_MEMORY_GIB,
    json_output: JsonOutput = False,
    json_out: JsonFileOutput = None,
) -> None:
    """Estimate the class proportions pi_t of an unlabelled set from its logits (label shift).

    The logits must be calibrated for a uniform prior: the debiased zero-shot model, a --balanced probe, or a GLA output after gla calibrate on a balanced validation set.

    An ensemble's implied prior is not uniform: its logits are refused. Labels in LOGITS are ignored.

    The output is a prior file (method mlls or bbse) for gla combine --target-prior and gla evaluate --target-prior; its max_moment_gap is the solver's KKT gap (BBSE: its system residual).

    Example:

        gla estimate-target debiased_test.h5 -o target.h5

        gla estimate-target debiased_test.h5 --method bbse --val debiased_val.h5 -o target.h5
    """
    with reporting(transient=json_output) as reporter:
        report = estimate_target_file(logits, output, method=method, val=val, calibrate=calibrate,
                                      concentration=concentration, tol=tol, max_iter=max_iter,
                                      memory_gib=memory_gib, reporter=reporter)
    if not emit_json(report, json_output, json_out):
        _print_target(report)


def _print_target(report: dict[str, Any]) -> None:
    fields = [("rows x classes", f"{report['n_rows']} x {report['n_classes']}"),
              ("method", report["method"]),
              ("iterations, KKT gap" if report["method"] == "mlls" else "system residual",
               f"{report['iterations']}, {report['kkt_gap']:.2e}" if report["method"] == "mlls"
               else f"{report['kkt_gap']:.2e}"),
              ("L1 distance from uniform", f"{report['l1_from_uniform']:.4f}"),
              ("largest / smallest class", f"{report['imbalance']:.3g}")]
    if report["calibration"]:
        fields.append(("BCTS temperature (on --calibrate)", f"{report['calibration']['temperature']:.4g}"))
    print_fields(f"Target label distribution -> {report['output']}", fields)
    table = Table(title="pi_t, most frequent first")
    table.add_column("class")
    table.add_column("pi_t %", justify="right")
    items = list(report["prior"].items())
    shown = items if len(items) <= 12 else items[:6] + [("...", None)] + items[-5:]
    for name, value in shown:
        table.add_row(name, "" if value is None else f"{100 * value:.2f}")
    out.print(table)
