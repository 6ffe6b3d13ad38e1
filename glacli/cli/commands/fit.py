"""``gla fit``: a linear-probe head on cached features (multinomial logistic regression, L-BFGS), or
with ``--method prompt`` the head of learned prompts (the GLA authors' few-shot prompt learner)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from glacli.base.errors import GlaInputError
from glacli.base.validation import require_choice, require_positive
from glacli.cli.app import (
    DeviceOption,
    JsonFileOutput,
    JsonOutput,
    app,
    emit_json,
    out,
    output_option,
    print_fields,
    reporting,
    warn,
)
from glacli.services.fit_defaults import (
    DEFAULT_EPOCHS,
    DEFAULT_LEARN,
    DEFAULT_MEMORY_GIB,
    DEFAULT_TEMPLATE,
    DEFAULT_TOL,
)

Output = output_option("HEAD.h5", "Head file")
FIT_METHODS = ("linear", "prompt")


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
        "--init", metavar="HEAD.h5",
        help="Start from this head (e.g. a zero-shot head); saves iterations. Default: the --anchor, else zero.")
    ] = None,
    anchor: Annotated[Path | None, typer.Option(
        "--anchor", metavar="ZS_HEAD.h5",
        help="Anchored probe: penalise wd/2 ||W - W_zs/T_zs||^2 instead of wd/2 ||W||^2, with T_zs fitted by NLL "
             "on the training rows; the bias stays the zero-shot head's. Writes an 'anchored' head.")] = None,
    balanced: Annotated[bool, typer.Option(
        "--balanced", help="Class-balanced (logit-adjusted) loss for long-tailed training sets.")] = False,
    device: DeviceOption = "auto",
    float64: Annotated[bool, typer.Option(
        "--float64", help="Compute in float64 (slower; for exact comparisons).")] = False,
    max_iter: Annotated[int, typer.Option("--max-iter", help="L-BFGS iterations at most, per fit.")] = 1000,
    tol: Annotated[float, typer.Option(
        "--tol", help="Relative tolerance of the final fit: stop when ||grad|| <= tol * wd * ||W|| "
                      "(about tol from the optimum).")] = DEFAULT_TOL,
    memory_gib: Annotated[float, typer.Option(
        "--memory", metavar="GIB",
        help="Features larger than this (in the compute dtype) are streamed from disk on every pass "
             "instead of held in memory.")] = DEFAULT_MEMORY_GIB,
    method: Annotated[str, typer.Option(
        "--method", help="linear: a probe on the features; prompt: learn the prompts of the open_clip text tower "
                         "(options below).")] = "linear",
    template: Annotated[str | None, typer.Option(
        "--template", help=f"prompt: a template with {{}} for the class name, or a prompt set or file whose first "
                           f"template is taken (default: {DEFAULT_TEMPLATE}).", show_default=False)] = None,
    learn: Annotated[str | None, typer.Option(
        "--learn", help=f"prompt: residuals per class on every prompt token (context+class, the GLA authors'), or "
                        f"one shared on the template's tokens (context, CoOp's; default: {DEFAULT_LEARN}).",
        show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", help=f"prompt: epochs; 0 writes the zero-shot head of the template (default: {DEFAULT_EPOCHS}).",
        show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(
        "--lr", help="prompt: SGD learning rate (default: the authors' for the shots per class: 2e-5 at 1, 4e-5 at "
                     "2, 1e-4 at 4, 2e-4 at 8, 4e-4 at 16).", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="prompt: images per step (default: 32 per shot).", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="prompt: seed of the shuffling and of the choice of views (default: 0).",
        show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="prompt: the open_clip model (must be the features'; default: their 'model').",
        show_default=False)] = None,
    pretrained: Annotated[str | None, typer.Option(
        "--pretrained", help="prompt: its weights (must be the features'; default: their 'pretrained').",
        show_default=False)] = None,
    json_output: JsonOutput = False,
    json_out: JsonFileOutput = None,
) -> None:
    """Fit a linear-probe head (multinomial logistic regression, full-batch L-BFGS) on cached features.

    With --val the penalty is chosen on the validation set: a warm-started path, then a finer search.

    This is the CLIP linear-probe protocol over a log-spaced grid.

    The chosen head is refitted and its temperature calibrated on --val by NLL.

    With --anchor the penalty pulls the head towards a zero-shot head instead of zero (CLAP): better at a few shots.

    With --method prompt it learns prompts of the open_clip text tower (the GLA authors' few-shot learner).

    It trains on views from gla extract --augment-views; --val chooses the epoch and the temperature.

    Example:

        gla fit train.h5 --val val.h5 -o linear_head.h5

        gla fit train.h5 --wd 1e-4 --init zeroshot_head.h5 -o linear_head.h5

        gla fit train.h5 --val val.h5 --anchor zeroshot_head.h5 -o anchored_head.h5

        gla fit train_views.h5 --method prompt --val val.h5 --template simple -o prompt_head.h5
    """
    prompt_options = {"--template": template, "--learn": learn, "--epochs": epochs, "--lr": lr,
                      "--batch-size": batch_size, "--seed": seed, "--model": model, "--pretrained": pretrained}
    linear_options = {"--wd": wd, "--init": init, "--anchor": anchor, "--balanced": balanced or None,
                      "--float64": float64 or None}
    require_choice(method, FIT_METHODS, "--method")
    given = [name for name, value in (linear_options if method == "prompt" else prompt_options).items()
             if value is not None]
    if given:
        other = "linear" if method == "prompt" else "prompt"
        raise GlaInputError(f"{', '.join(given)}: for --method {other} only")
    if method == "prompt":
        from glacli.services.fit_prompt import fit_prompt_head  # torch: when fitting, not for the help

        with reporting(transient=json_output) as reporter:
            report = fit_prompt_head(train, output, val=val, template=template, learn=learn, epochs=epochs, lr=lr,
                                     batch_size=batch_size, seed=seed, model=model, pretrained=pretrained,
                                     device=device, reporter=reporter)
        for warning in report["warnings"]:
            warn(warning)
        if not emit_json(report, json_output, json_out):
            _print_prompt(report)
        return
    penalty = None if wd is None else require_positive(wd, "--wd")
    from glacli.services.fit import fit_head  # torch: when fitting, not for the help

    with reporting(transient=json_output) as reporter:
        report = fit_head(train, output, val=val, wd=penalty, init=init, anchor=anchor, balanced=balanced,
                          device=device, float64=float64, max_iter=max_iter, tol=tol, memory_gib=memory_gib,
                          reporter=reporter)
    for warning in report["warnings"]:
        warn(warning)
    if not emit_json(report, json_output, json_out):
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
    if report["anchor"] is not None:
        fields.append(("anchor (T_zs)", f"{report['anchor']['anchor']} ({report['anchor']['anchor_t_zs']:.4g})"))
    fields += [("temperature", f"{report['temperature']:.4g}"),
               ("final loss", f"{report['final_loss']:.6g}"),
               ("iterations", f"{report['iterations']}{'' if report['converged'] else ' (not converged)'}"),
               ("balanced loss", "yes" if report["balanced"] else "no"),
               ("device", report["device"])]
    print_fields(f"{'Linear' if report['anchor'] is None else 'Anchored'} head -> {report['output']}", fields)


def _print_prompt(report: dict[str, Any]) -> None:
    fields = [("rows (images) x features -> classes",
               f"{report['n_rows']} ({report['n_images']}) x {report['n_features']} -> {report['n_classes']}"),
              ("template", report["template"]), ("learned", report["learn"]),
              ("epochs (kept)", f"{report['epochs']} ({report['best_epoch']})"),
              ("lr, batch", f"{report['lr']:.3g}, {report['batch_size']} ({report['steps_per_epoch']} steps/epoch)")]
    if report["train_loss"] is not None:
        fields.append(("training loss (last epoch)", f"{report['train_loss']:.4f}"))
    if report["val_accuracy"] is not None:
        nll = f"{report['val_nll_uncalibrated']:.4f} -> {report['val_nll']:.4f}"
        fields += [("val top-1 %", f"{100 * report['val_accuracy']:.2f}"), ("val NLL (T = 1 -> calibrated)", nll)]
    fields += [("temperature", f"{report['temperature']:.4g}"), ("device", report["device"])]
    print_fields(f"Prompt head -> {report['output']}", fields)
