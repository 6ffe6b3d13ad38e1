"""``gla fit``, ``gla logits`` and ``gla calibrate``: linear-probe heads, logits from heads, temperature scaling."""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import typer
from rich.table import Table

from glacli import store
from glacli.app import (
    app,
    err,
    fail,
    out,
    parse_positive_float,
    print_fields,
    print_json,
    progress,
)
from glacli.calibration import T_MAX, T_MIN, fit_temperature_confidence, fit_temperature_nll, nll
from glacli.devices import resolve_device
from glacli.heads import apply_head, head_tensors
from glacli.probe import (
    WD_GRID,
    PathPoint,
    ProbeData,
    ProbeResult,
    SolverOptions,
    chunk_rows_for,
    planned_fits,
    train_probe,
    wd_to_c,
)

DEFAULT_MEMORY_GIB = 8.0
CALIBRATION_METHODS = ("nll", "confidence")
TEMPERATURE_MATCH = 1e-6


# --------------------------------------------------------------------------- gla fit


@app.command("fit")
def fit_cmd(
    train: Path = typer.Argument(..., metavar="TRAIN_FEATURES.h5", help="Labelled training features."),
    output: Path = typer.Option(..., "-o", "--output", metavar="HEAD.h5", help="Head file to write."),
    val: Path | None = typer.Option(
        None, "--val", metavar="VAL_FEATURES.h5",
        help="Labelled validation features: choose the penalty on them, then calibrate the temperature by NLL."),
    wd: str | None = typer.Option(
        None, "--wd", metavar="FLOAT",
        help="Fix the L2 penalty (objective: mean CE + wd/2 ||W||^2; scikit-learn's C = 1/(wd N)) "
             "instead of searching it on --val."),
    init: Path | None = typer.Option(
        None, "--init", metavar="HEAD.h5", help="Start from this head (e.g. a zero-shot head); saves iterations."),
    balanced: bool = typer.Option(
        False, "--balanced", help="Class-balanced (logit-adjusted) loss for long-tailed training sets."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    float64: bool = typer.Option(False, "--float64", help="Compute in float64 (slower; for exact comparisons)."),
    max_iter: int = typer.Option(1000, "--max-iter", help="L-BFGS iterations at most, per fit."),
    tol: float = typer.Option(
        SolverOptions.tol, "--tol",
        help="Relative tolerance of the final fit: stop when ||grad|| <= tol * wd * ||W|| "
             "(about tol from the optimum)."),
    memory_gib: float = typer.Option(
        DEFAULT_MEMORY_GIB, "--memory", metavar="GIB",
        help="Features larger than this (in the compute dtype) are streamed from disk on every pass "
             "instead of held in memory."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
) -> None:
    """Fit a linear-probe head (multinomial logistic regression, full-batch L-BFGS) on cached features.

    With --val the penalty is chosen on the validation set: a warm-started path, then a finer search.

    This is the CLIP linear-probe protocol over a log-spaced grid.

    The chosen head is refitted and its temperature calibrated on --val by NLL.

    Example:

        gla fit train.h5 --val val.h5 -o linear_head.h5

        gla fit train.h5 --wd 1e-4 --init zeroshot_head.h5 -o linear_head.h5
    """
    penalty = None if wd is None else parse_positive_float(wd, "--wd")
    if penalty is None and val is None:
        fail("give --val to choose the penalty on a validation set, or --wd to fix it")
    if max_iter < 1 or not (tol > 0) or not (memory_gib > 0):
        fail("--max-iter must be at least 1, --tol and --memory positive")
    torch_device = resolve_device(device)
    options = SolverOptions(device=torch_device, dtype=torch.float64 if float64 else torch.float32,
                            max_iter=max_iter, tol=tol, search_tol=max(tol, SolverOptions.search_tol))
    memory_bytes = memory_gib * 2**30
    load_start = time.perf_counter()
    with contextlib.ExitStack() as files:
        train_file = files.enter_context(store.read_rows(train, "features"))
        train_labels = train_file.require_labels("to fit a probe")
        counts = np.bincount(train_labels, minlength=train_file.n_classes)
        if (counts == 0).any():
            k = int(np.argmax(counts == 0))
            fail(f"class {train_file.classnames[k]!r} has no training rows; a linear probe needs every class",
                 train_file.path)
        parents = [train_file.gla_id]
        val_data = None
        if val is not None:
            val_file = files.enter_context(store.read_rows(val, "features"))
            _check_compatible(val_file, train_file)
            val_file.require_labels("to choose the penalty and the temperature")
            val_data = _probe_data(val_file, options, memory_bytes)
            parents.append(val_file.gla_id)
        start = None
        if init is not None:
            head = store.read_head(init)
            _check_head_fits(head, init, train_file)
            weight, bias = head_tensors(head, dtype=torch.float64)
            start = (weight / head.temperature, bias / head.temperature)
            parents.append(head.gla_id)
        train_data = _probe_data(train_file, options, memory_bytes)
        fit_start = time.perf_counter()
        result = _run_fit(train_data, val_data, penalty, options, start, balanced, quiet=json_output)
        fit_seconds = time.perf_counter() - fit_start
        attrs = {"wd": result.wd, "c_equivalent": wd_to_c(result.wd, train_file.n_rows),
                 "iterations": result.iterations, "final_loss": result.final_loss,
                 "converged": result.converged, "balanced": balanced, "n_rows": train_file.n_rows,
                 "train": str(train),
                 **{k: train_file.attrs[k] for k in ("model", "pretrained") if k in train_file.attrs}}
        if result.val_accuracy is not None:
            attrs["val_accuracy"] = result.val_accuracy
            attrs["val_nll"] = result.val_nll
        store.write_head(output, store.Head(weight=result.weight, bias=result.bias,
                                            classnames=train_file.classnames, head_type="linear",
                                            temperature=result.temperature, attrs=attrs), parents)
        report = _fit_report(result, train_file, output, balanced, torch_device)
        report["seconds"] = {"load": fit_start - load_start, "fit": fit_seconds}
        report["warnings"] = fit_warnings(result, searched=penalty is None)
    for warning in report["warnings"]:
        err.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    if json_output:
        print_json(report)
    else:
        _print_fit(report)


def fit_warnings(result: ProbeResult, searched: bool) -> list[str]:
    """What a user should look at before trusting the head: no convergence, a penalty or temperature at a bound."""
    warnings = []
    if not result.converged:
        warnings.append(f"the final fit stopped after {result.iterations} iterations without converging; "
                        "raise --max-iter")
    strongest = max(result.path, key=lambda point: point.wd, default=None)
    if searched and strongest is not None and result.val_accuracy <= strongest.val_accuracy:
        warnings.append(f"no penalty validated better than the strongest searched (wd {strongest.wd:g}), whose head "
                        "is close to zero: the features carry little signal for these labels; check them")
    if searched and result.wd <= WD_GRID[-2]:
        warnings.append(f"the chosen penalty wd {result.wd:.3g} is at the weak end of the searched range "
                        f"({WD_GRID[0]:g} to {WD_GRID[-1]:g}): the validation optimum may lie beyond it; "
                        "try --wd with a smaller value")
    if result.val_accuracy is not None and not T_MIN * 1.0001 < result.temperature < T_MAX / 1.0001:
        warnings.append(f"the calibrated temperature {result.temperature:g} is at its bound: the validation "
                        "rows are classified with full confidence (separable) or the logits carry no signal")
    return warnings


def _check_compatible(other: store.RowFile, train_file: store.RowFile) -> None:
    store.check_same_classnames(other.classnames, other.path, train_file.classnames, train_file.path)
    if other.n_cols != train_file.n_cols:
        fail(f"has {other.n_cols}-dimensional features but {train_file.path} has {train_file.n_cols}", other.path)


def _check_head_fits(head: store.Head, head_path: Path, features: store.RowFile) -> None:
    store.check_same_classnames(head.classnames, head_path, features.classnames, features.path)
    if head.weight.shape[1] != features.n_cols:
        fail(f"head takes {head.weight.shape[1]}-dimensional features but {features.path} has "
             f"{features.n_cols}", str(head_path))


def hold_on_device(n_bytes: float, memory_bytes: float, device: torch.device) -> bool:
    """Whether features of ``n_bytes`` are held on ``device`` rather than streamed from disk: they must fit
    ``--memory`` and, on a GPU, half of its free memory (the rest is for logits chunks and solver state)."""
    if n_bytes > memory_bytes:
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return n_bytes <= free / 2
    return True


def _probe_data(rows: store.RowFile, options: SolverOptions, memory_bytes: float) -> ProbeData:
    """The rows in memory on the compute device when they fit (:func:`hold_on_device`), else streamed from disk."""
    labels = torch.from_numpy(rows.labels)
    itemsize = torch.finfo(options.dtype).bits // 8
    if hold_on_device(rows.n_rows * rows.n_cols * itemsize, memory_bytes, options.device):
        features = torch.empty(rows.n_rows, rows.n_cols, dtype=options.dtype, device=options.device)
        for chunk in rows.iter_chunks():
            features[chunk.start:chunk.stop] = torch.from_numpy(chunk.values).to(options.device, options.dtype)
        return ProbeData.from_tensors(features, labels, rows.n_classes)
    step = chunk_rows_for(rows.n_cols, rows.n_classes, options.device)  # large on a GPU; memory stays one chunk

    def chunks():
        for chunk in rows.iter_chunks(step):
            yield torch.from_numpy(chunk.values), torch.from_numpy(chunk.labels)

    return ProbeData(chunks, labels, rows.n_cols, rows.n_classes)


def _run_fit(train: ProbeData, val: ProbeData | None, penalty: float | None, options: SolverOptions,
             start: tuple[torch.Tensor, torch.Tensor] | None, balanced: bool, quiet: bool) -> ProbeResult:
    searching = penalty is None
    with progress(transient=quiet) as bar:
        if searching:
            task = bar.add_task("penalty search", total=planned_fits() + 1)
            best: list[PathPoint] = []

            def on_fit(point: PathPoint) -> None:
                if not best or point.key() > best[0].key():
                    best[:] = [point]
                bar.update(task, advance=1, description=f"penalty search: wd {point.wd:.1e} "
                           f"(best {best[0].wd:.1e}, val {100 * best[0].val_accuracy:.2f}%)")

            result = train_probe(train, val=val, options=options, init=start, balanced=balanced,
                                 grid=WD_GRID, on_fit=on_fit)
        else:
            task = bar.add_task(f"fitting at wd {penalty:.1e} (L-BFGS evaluations)", total=2 * options.max_iter)
            result = train_probe(train, val=val, wd=penalty, options=options, init=start, balanced=balanced,
                                 on_evaluation=lambda loss: bar.advance(task))
        bar.update(task, completed=bar.tasks[task].total)
    return result


def _fit_report(result: ProbeResult, train_file: store.RowFile, output: Path, balanced: bool,
                device: torch.device) -> dict:
    report = {
        "output": str(output), "wd": result.wd, "c_equivalent": wd_to_c(result.wd, train_file.n_rows),
        "temperature": result.temperature, "iterations": result.iterations, "final_loss": result.final_loss,
        "converged": result.converged, "balanced": balanced, "n_rows": train_file.n_rows,
        "n_features": train_file.n_cols, "n_classes": train_file.n_classes, "device": str(device),
        "val_accuracy": result.val_accuracy, "val_nll": result.val_nll,
        "val_nll_uncalibrated": result.val_nll_uncalibrated,
        "path": [{"wd": p.wd, "val_accuracy": p.val_accuracy, "val_nll": p.val_nll, "iterations": p.iterations,
                  "loss": p.loss, "stage": p.stage} for p in result.path],
    }
    return report


def _print_fit(report: dict) -> None:
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


# --------------------------------------------------------------------------- gla logits


@app.command("logits")
def logits_cmd(
    features: Path = typer.Argument(..., metavar="FEATURES.h5", help="Features to classify."),
    head: Path = typer.Argument(..., metavar="HEAD.h5", help="Zero-shot or linear head."),
    output: Path = typer.Option(..., "-o", "--output", metavar="LOGITS.h5", help="Logits file to write."),
) -> None:
    """Apply a head to features: logits = (features @ weight.T + bias) / temperature, streamed in chunks.

    Keeps the ids, labels and classnames of FEATURES; records the head's temperature (already applied) and head_type.

    Example:

        gla logits test.h5 linear_head.h5 -o ft_test.h5
    """
    head_file = store.read_head(head)
    with store.read_rows(features, "features") as rows:
        _check_head_fits(head_file, head, rows)
        weight, bias = head_tensors(head_file)
        attrs = {"temperature": head_file.temperature, "head_type": head_file.head_type, "head_id": head_file.gla_id,
                 **{k: head_file.attrs[k] for k in ("model", "pretrained", "templates") if k in head_file.attrs}}
        step = chunk_rows_for(rows.n_cols, rows.n_classes, "cpu")
        with store.write_rows(output, "logits", n_rows=rows.n_rows, n_cols=rows.n_classes,
                              classnames=rows.classnames, attrs=attrs,
                              parents=[rows.gla_id, head_file.gla_id]) as sink, progress(transient=True) as bar:
            task = bar.add_task("logits", total=rows.n_rows)
            for chunk in rows.iter_chunks(step, with_ids=True):
                logits = apply_head(torch.from_numpy(chunk.values), weight, bias, head_file.temperature)
                sink.write(chunk.start, logits.numpy(), chunk.labels, chunk.ids)
                bar.advance(task, chunk.stop - chunk.start)
    err.print(f"wrote {rows.n_rows} x {rows.n_classes} logits to {output}")


# --------------------------------------------------------------------------- gla calibrate


@app.command("calibrate")
def calibrate_cmd(
    logits: Path = typer.Argument(..., metavar="LOGITS.h5", help="Logits to calibrate (any source)."),
    val: Path = typer.Option(..., "--val", metavar="VAL_LOGITS.h5",
                             help="Labelled logits of the same model on held-out data: T is fitted on them."),
    output: Path = typer.Option(..., "-o", "--output", metavar="OUT.h5", help="Calibrated logits file to write."),
    method: str = typer.Option("nll", "--method", metavar="nll|confidence",
                               help="nll: minimise validation NLL; confidence: mean max-probability = accuracy."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
) -> None:
    """Temperature scaling: fit T on --val, write LOGITS / T (streamed) and record the total temperature.

    The recorded temperature is the total applied: T times any temperature LOGITS already had.

    LOGITS and --val must have the same classnames and the same temperature already applied.

    Example:

        gla calibrate imported_test.h5 --val imported_val.h5 -o calibrated_test.h5
    """
    if method not in CALIBRATION_METHODS:
        fail(f"--method: expected nll or confidence, got {method!r}")
    with store.read_rows(val, "logits") as val_file:
        labels = torch.from_numpy(val_file.require_labels("to fit a temperature"))
        val_logits = torch.from_numpy(val_file.read())
        val_classnames, val_temperature, val_id = val_file.classnames, val_file.temperature, val_file.gla_id
    with store.read_rows(logits, "logits") as rows:
        store.check_same_classnames(val_classnames, val, rows.classnames, rows.path)
        if not math.isclose(val_temperature, rows.temperature, rel_tol=TEMPERATURE_MATCH):
            fail(f"has temperature {val_temperature:g} already applied but {rows.path} has "
                 f"{rows.temperature:g}; calibrate logits on the same scale", str(val))
        try:
            temperature = (fit_temperature_nll(val_logits, labels) if method == "nll"
                           else fit_temperature_confidence(val_logits, labels))
        except ValueError as exc:
            fail(str(exc), str(val))
        total = temperature * rows.temperature
        attrs = {**{k: v for k, v in rows.attrs.items() if k not in store.PROVENANCE_ATTRS},
                 "temperature": total, "calibration_method": method}
        with store.write_rows(output, "logits", n_rows=rows.n_rows, n_cols=rows.n_cols,
                              classnames=rows.classnames, attrs=attrs,
                              parents=[rows.gla_id, val_id]) as sink, progress(transient=True) as bar:
            task = bar.add_task("calibrating", total=rows.n_rows)
            for chunk in rows.iter_chunks(with_ids=True):
                sink.write(chunk.start, (chunk.values / np.float32(temperature)).astype(np.float32),
                           chunk.labels, chunk.ids)
                bar.advance(task, chunk.stop - chunk.start)
        report = {"output": str(output), "method": method, "temperature": temperature,
                  "total_temperature": total, "input_temperature": rows.temperature,
                  "val_rows": len(labels),
                  "val_accuracy": float((val_logits.argmax(1) == labels).double().mean()),
                  "val_nll_before": nll(val_logits, labels), "val_nll_after": nll(val_logits, labels, temperature)}
    if json_output:
        print_json(report)
        return
    print_fields(f"Temperature scaling ({method}) -> {output}", [
        ("fitted T (on --val)", f"{temperature:.4g}"),
        ("total temperature recorded", f"{total:.4g}"),
        ("val top-1 %", f"{100 * report['val_accuracy']:.2f}"),
        ("val NLL before -> after", f"{report['val_nll_before']:.4f} -> {report['val_nll_after']:.4f}")])
