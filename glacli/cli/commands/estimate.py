"""``gla estimate-prior``: fit the zero-shot model's label prior q (and its temperature)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from glacli.cli.app import (
    DeviceOption,
    JsonFileOutput,
    JsonOutput,
    app,
    emit_json,
    output_option,
    parse_choice_or_float,
    print_fields,
    reporting,
)
from glacli.core.prior import DEFAULT_TOL
from glacli.services.estimate import (
    DEFAULT_MEMORY_GIB,
    TEMPERATURE_METHODS,
    estimate_prior_file,
)

Output = output_option("PRIOR.h5", "Prior file")


@app.command("estimate-prior")
def estimate_prior_command(
    zs_logits: Annotated[list[Path], typer.Argument(
        metavar="ZS_LOGITS.h5...", help="Zero-shot logits (kind 'logits'); several files are pooled.",
        show_default=False)],
    output: Output,
    temperature: Annotated[str, typer.Option(
        "--temperature", "-t", metavar="nll|confidence|FLOAT",
        help="nll: fit T and q jointly by maximum likelihood; confidence: T such that mean max-probability "
             "equals accuracy (the paper's choice), then q; a number: fixed T (1 = none).")] = "nll",
    target: Annotated[str, typer.Option(
        "--target", metavar="labels|uniform|FILE",
        help="Class proportions of the estimation set: its labels; uniform (balanced set, no labels needed, "
             "with a numeric --temperature); or a file (prior .h5, .json, .npy, or .txt with one number per "
             "line).")] = "labels",
    tol: Annotated[float, typer.Option(
        "--tol", help="Stop when every moment gap |f_k - mean p_k| is below this.")] = DEFAULT_TOL,
    max_iter: Annotated[int, typer.Option("--max-iter", help="Newton iterations at most.")] = 100,
    device: DeviceOption = "auto",
    memory_gib: Annotated[float, typer.Option(
        "--memory", metavar="GIB",
        help="Keep float32 copies in memory when they fit this: exp(z/T) with T fixed; with nll the logits, "
             "and exp(z/T) beside them when both fit (fastest); else every pass streams the files.")] = DEFAULT_MEMORY_GIB,
    show: Annotated[int, typer.Option("--show", help="How many most and least likely classes to report.")] = 5,
    json_output: JsonOutput = False,
    json_out: JsonFileOutput = None,
) -> None:
    """Estimate the label prior q of a zero-shot model from its logits on a held-out set.

    On a set with class proportions f the model is softmax(z/T - log q + log f): q is its maximum-likelihood
    prior over the simplex, solved exactly (Newton, float64 moment gap below --tol), for any f.

    Inputs with different temperatures already applied are pooled at the raw scale (values x temperature);
    the prior file records the scale q belongs to (logits_temperature).

    Example:

        gla estimate-prior zs_val.h5 -o prior.h5 --temperature nll

        gla estimate-prior zs_unlabelled_balanced.h5 -o prior.h5 --target uniform --temperature 1

        gla estimate-prior zs_train.h5 zs_val.h5 -o prior.h5     # pooled: train + validation shots
    """
    method = parse_choice_or_float(temperature, TEMPERATURE_METHODS, "--temperature")
    with reporting() as reporter:
        report = estimate_prior_file(zs_logits, output, temperature=method, target=target, tol=tol,
                                     max_iter=max_iter, device=device, memory_gib=memory_gib, show=show,
                                     reporter=reporter)
    if not emit_json(report, json_output, json_out):
        _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    status = "[green]converged[/]" if report["converged"] else "[red]not converged[/]"
    fields = [
        ("rows x classes", f"{report['n_rows']} x {report['n_classes']}"),
        ("temperature", f"{report['temperature']:.4f} ({report['temperature_method']})"),
        ("iterations", str(report["iterations"])),
        ("max moment gap", f"{report['max_moment_gap']:.2e} {status}"),
        ("class imbalance (max/min share)", f"{report['imbalance']:.3g}"),
    ]
    if report["logits_temperature"] != 1.0:
        fields.append(("scale of the input logits", f"raw / {report['logits_temperature']:.4g}"))
    if report["objective"] is not None:
        fields.append(("mean cross-entropy", f"{report['objective']:.6f}"))
    if "top1_before" in report:
        for name, key in (("top-1 (estimation set)", "top1"),
                          ("mean per-class acc. (estimation set)", "mean_per_class")):
            before, after = report[f"{key}_before"], report[f"{key}_after"]
            fields.append((name, f"{before:.2f} -> {after:.2f} ({after - before:+.2f} pp)"))
    fields += [
        ("effective classes exp(H(q))", f"{report['effective_classes']:.1f}"),
        ("most likely", ", ".join(f"{c['class']} {c['q']:.4f}" for c in report["most_likely"])),
        ("least likely", ", ".join(f"{c['class']} {c['q']:.2e}" for c in report["least_likely"])),
        ("written", report["output"]),
    ]
    print_fields(f"Label prior of {report['input']}", fields)
