"""``gla estimate-prior``: fit the zero-shot model's label prior q (and its temperature).

The rows are streamed from the files on every pass; with T fixed the solver keeps one float32
array of exponentials when it fits ``--memory``. On a CPU this command never imports torch (the
solver runs on numpy), so it starts as fast as the commands without a model.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from glacli import store
from glacli.app import app, err, fail, parse_choice_or_float, print_fields, print_json
from glacli.calibration import T_MIN
from glacli.prior import (
    DEFAULT_TOL,
    LogitSource,
    PriorEstimate,
    class_proportions,
    estimate_prior,
)

TEMPERATURE_METHODS = ("nll", "confidence")
DEFAULT_MEMORY_GIB = 8.0


@app.command("estimate-prior")
def estimate_prior_cmd(
    zs_logits: list[Path] = typer.Argument(..., metavar="ZS_LOGITS.h5...",
                                           help="Zero-shot logits (kind 'logits'); several files are pooled."),
    output: Path = typer.Option(..., "-o", "--output", metavar="PRIOR.h5", help="Prior file to write."),
    temperature: str = typer.Option(
        "nll", "--temperature", "-t", metavar="nll|confidence|FLOAT",
        help="nll: fit T and q jointly by maximum likelihood; confidence: T such that mean max-probability "
             "equals accuracy (the paper's choice), then q; a number: fixed T (1 = none)."),
    target: str = typer.Option(
        "labels", "--target", metavar="labels|uniform|FILE",
        help="Class proportions of the estimation set: its labels; uniform (balanced set, no labels needed, "
             "with a numeric --temperature); or a file (prior .h5, .json, .npy, or .txt with one number per line)."),
    tol: float = typer.Option(DEFAULT_TOL, "--tol", help="Stop when every moment gap |f_k - mean p_k| is below this."),
    max_iter: int = typer.Option(100, "--max-iter", help="Newton iterations at most."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto: a GPU when present)."),
    memory_gib: float = typer.Option(
        DEFAULT_MEMORY_GIB, "--memory", metavar="GIB",
        help="With T fixed, keep exp(z/T) in memory (float32) when it fits this; else every pass streams the files."),
    show: int = typer.Option(5, "--show", help="How many most and least likely classes to report."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
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
    if tol <= 0 or max_iter < 1 or show < 0 or not memory_gib > 0:
        fail("--tol and --memory must be positive, --max-iter at least 1 and --show not negative")
    store.check_output_path(output)
    compute = _compute_device(device)
    with contextlib.ExitStack() as files:
        rows = _open_pooled(zs_logits, files, compute)
        proportions = _target_proportions(target, method, rows)
        if method in TEMPERATURE_METHODS:
            rows.require_labels(f"for --temperature {method}")
        labels = rows.labels if rows.has_labels else None
        try:
            fit = estimate_prior(rows.source, proportions, method, labels=labels, tol=tol, max_iter=max_iter,
                                 hold_bytes=memory_gib * 2**30 * (0.5 if compute != "cpu" else 1.0))
        except ValueError as exc:
            fail(str(exc), rows.path)
        report = _report(rows, labels, proportions, fit, method if isinstance(method, str) else "fixed",
                         output, show)
    parents, classnames = rows.parents, rows.classnames
    if method == "nll" and (not fit.converged or fit.temperature <= T_MIN * 1.0001):
        why = ("the logits carry almost no information about these labels" if fit.temperature > 1 else
               "with q free, the logits separate the labels, which is common on a few dozen rows")
        fail(f"--temperature nll has no finite optimum here (T went to {fit.temperature:.3g} in "
             f"{fit.iterations} iterations): {why}; give a fixed --temperature", rows.path)
    attrs = {"target": target if target in ("labels", "uniform") else str(Path(target)),
             "objective": fit.objective, "temperature_gradient": fit.temperature_gradient,
             "n_rows": rows.n_rows, "source": rows.path, **rows.head_attrs}
    store.write_prior(output, store.Prior(
        prior=np.exp(fit.log_prior), log_prior=fit.log_prior, classnames=classnames, temperature=fit.temperature,
        method=report["temperature_method"], converged=fit.converged, max_moment_gap=fit.max_moment_gap,
        iterations=fit.iterations, logits_temperature=rows.temperature, attrs=attrs), parents)
    if not fit.converged:
        gaps = np.abs(fit.moment_gaps)
        worst = [k for k in np.argsort(-gaps, kind="stable")[:3] if gaps[k] > tol]
        named = ", ".join(f"{classnames[k]!r} ({gaps[k]:.1e})" for k in worst)
        err.print(f"[yellow]warning:[/] not converged after {fit.iterations} iterations (max moment gap "
                  f"{fit.max_moment_gap:.2e} > {tol:g}); the rows pin q down poorly for {named}: at T = "
                  f"{fit.temperature:.4g} their probabilities are nearly 0 or 1 on every row. Fit T "
                  "(--temperature nll) or raise --max-iter", soft_wrap=True)
    if json_output:
        print_json(report)
    else:
        _print_report(report)


@dataclass
class _PooledRows:
    """One or more open logits files, streamed block by block on every pass of the solver."""

    path: str
    files: list[store.RowFile]
    scales: list[float]
    """What each file's values are multiplied by (1, or its temperature to pool at the raw scale)."""
    labels: np.ndarray
    classnames: list[str]
    parents: list[str]
    temperature: float
    """The temperature applied to the pooled values: the inputs' own, or 1 where they differed (raw scale)."""
    head_attrs: dict[str, str]
    """Which zero-shot head produced the logits (``zeroshot_head_id``, model, templates), where known."""
    source: LogitSource

    @property
    def n_rows(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    @property
    def has_labels(self) -> bool:
        return store.labels_complete(self.labels)

    def require_labels(self, purpose: str) -> np.ndarray:
        return store.require_labels(self.labels, self.path, purpose)

    def blocks(self, device: str = "cpu") -> Iterator[Any]:
        """Float32 blocks of every file in order, scaled, as numpy (CPU) or torch tensors (``device``)."""
        for rows, scale in zip(self.files, self.scales):
            for chunk in rows.iter_chunks():
                values = chunk.values if scale == 1.0 else chunk.values * np.float32(scale)
                if device == "cpu":
                    yield values
                else:
                    import torch  # a GPU was asked for: torch is needed, and only then
                    yield torch.from_numpy(values).to(device)


HEAD_ATTRS = {"head_id": "zeroshot_head_id", "model": "zeroshot_model", "pretrained": "zeroshot_pretrained",
              "templates": "zeroshot_templates"}
"""Logits attribute -> prior attribute naming the zero-shot head that q belongs to."""


def _open_pooled(paths: list[Path], files: contextlib.ExitStack, device: str) -> _PooledRows:
    """Every input, at one scale: their common temperature, or the raw scale where they differ."""
    opened, heads = [], []
    for path in paths:
        logits_file = files.enter_context(store.read_rows(path, "logits"))
        if logits_file.attrs.get("head_type", "zeroshot") != "zeroshot":
            err.print(f"[yellow]warning:[/] {path} comes from a '{logits_file.attrs['head_type']}' head; "
                      "q describes the model whose logits you give")
        if opened:
            store.check_same_classnames(logits_file.classnames, path, opened[0].classnames, paths[0])
        if logits_file.n_rows == 0:
            fail("has no rows", path)
        opened.append(logits_file)
        heads.append({HEAD_ATTRS[k]: str(v) for k, v in logits_file.attrs.items() if k in HEAD_ATTRS})
    temperatures = [f.temperature for f in opened]
    temperature, scales = temperatures[0], [1.0] * len(opened)
    if any(not math.isclose(t, temperature, rel_tol=1e-9) for t in temperatures):
        listed = ", ".join(f"{path} x {t:g}" for path, t in zip(paths, temperatures))
        err.print(f"inputs had different temperatures applied; pooled at the raw scale ({listed})")
        temperature, scales = 1.0, temperatures
    head_ids = {h.get("zeroshot_head_id") for h in heads} - {None}
    if len(head_ids) > 1:
        err.print(f"[yellow]warning:[/] the inputs come from {len(head_ids)} different zero-shot heads; "
                  "q describes their mixture")
    labels = np.concatenate([f.labels for f in opened])
    pooled = _PooledRows(" + ".join(map(str, paths)), opened, scales, labels, opened[0].classnames,
                         [f.gla_id for f in opened], temperature, heads[0] if len(head_ids) <= 1 else {},
                         LogitSource(lambda: None, len(labels), opened[0].n_classes))
    pooled.source.blocks = lambda: pooled.blocks(device)
    return pooled


def _compute_device(device: str) -> str:
    """``cpu`` (numpy; torch is not imported) or a CUDA device name; ``auto`` takes a GPU when present."""
    if device == "cpu":
        return "cpu"
    if device == "auto" and not os.path.exists("/dev/nvidia0") and not os.path.isdir("/proc/driver/nvidia/gpus"):
        return "cpu"  # no NVIDIA device on this machine: no need to import torch to find out
    from glacli.devices import resolve_device
    return str(resolve_device(device))


def _target_proportions(target: str, method: str | float, rows: _PooledRows) -> np.ndarray:
    n_classes = rows.n_classes
    if target == "labels":
        labels = rows.require_labels("for --target labels (use --target uniform for a balanced unlabelled set)")
        counts = np.bincount(labels, minlength=n_classes)
        if (counts == 0).any():
            k = int(np.argmax(counts == 0))
            fail(f"class {rows.classnames[k]!r} has no samples; --target labels needs every class "
                 "(q is undefined for an absent class)", rows.path)
        return class_proportions(labels, n_classes)
    if method == "nll":
        fail(f"--temperature nll fits T to the labels, so it needs --target labels; with --target {target} "
             "give a number, e.g. --temperature 1")
    if target == "uniform":
        return np.full(n_classes, 1.0 / n_classes)
    return read_proportions(Path(target), rows.classnames)


def read_proportions(path: Path, classnames: list[str]) -> np.ndarray:
    """Class proportions from a prior .h5, a .json (list or {classnames, prior}), .npy or one-per-line text."""
    if not path.exists():
        fail("no such file (--target is labels, uniform or a file of class proportions)", str(path))
    suffix = path.suffix.lower()
    names = None
    try:
        if suffix in (".h5", ".hdf5"):
            prior = store.read_prior(path)
            values, names = prior.prior, prior.classnames
        elif suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                names = data.get("classnames")
                data = data.get("prior", data.get("proportions"))
            values = np.asarray(data, dtype=np.float64)
        elif suffix == ".npy":
            values = np.load(path, allow_pickle=False).astype(np.float64)
        else:
            values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except (ValueError, TypeError, OSError) as exc:
        fail(f"cannot read class proportions: {exc}", str(path))
    if names is not None:
        store.check_same_classnames(names, path, classnames, "the logits")
    if values.ndim != 1 or len(values) != len(classnames):
        fail(f"holds {values.size} proportions for {len(classnames)} classes", str(path))
    store.require_finite(values, "proportions", path)
    if (values <= 0).any():
        fail("class proportions must all be positive", str(path))
    return values / values.sum()


def _report(rows: _PooledRows, labels: np.ndarray | None, proportions: np.ndarray, fit: PriorEstimate,
            method: str, output: Path, show: int) -> dict:
    log_q = fit.log_prior
    q = np.exp(log_q)
    order = np.argsort(-log_q, kind="stable")
    classnames = rows.classnames
    report = {
        "input": rows.path, "output": str(output), "n_rows": rows.n_rows, "n_classes": len(classnames),
        "temperature": fit.temperature, "temperature_method": method, "logits_temperature": rows.temperature,
        "iterations": fit.iterations, "passes": fit.passes, "max_moment_gap": fit.max_moment_gap,
        "converged": fit.converged, "objective": fit.objective, "temperature_gradient": fit.temperature_gradient,
        "imbalance": float(proportions.max() / proportions.min()),
        "effective_classes": float(np.exp(-(q * log_q).sum())),
        "most_likely": [{"class": classnames[k], "q": float(q[k]), "log_q": float(log_q[k])} for k in order[:show]],
        "least_likely": [{"class": classnames[k], "q": float(q[k]), "log_q": float(log_q[k])}
                         for k in order[::-1][:show]],
    }
    if labels is not None:
        counts = np.bincount(labels, minlength=len(classnames))
        present = counts > 0
        (top1_before, top1_after), (per_class_before, per_class_after) = (
            fit.correct.sum(1) / len(labels) * 100, (fit.correct[:, present] / counts[present]).mean(1) * 100)
        report.update(top1_before=float(top1_before), top1_after=float(top1_after),
                      mean_per_class_before=float(per_class_before), mean_per_class_after=float(per_class_after))
    return report


def _print_report(report: dict) -> None:
    status = "[green]converged[/]" if report["converged"] else "[red]not converged[/]"
    fields = [
        ("rows x classes", f"{report['n_rows']} x {report['n_classes']}"),
        ("temperature", f"{report['temperature']:.4f} ({report['temperature_method']})"),
        ("iterations", str(report["iterations"])),
        ("max moment gap", f"{report['max_moment_gap']:.2e} {status}"),
    ]
    fields.append(("class imbalance (max/min share)", f"{report['imbalance']:.3g}"))
    if report["logits_temperature"] != 1.0:
        fields.append(("scale of the input logits", f"raw / {report['logits_temperature']:.4g}"))
    if report["objective"] is not None:
        fields.append(("mean cross-entropy", f"{report['objective']:.6f}"))
    if "top1_before" in report:
        for name, key in (("top-1 (estimation set)", "top1"), ("mean per-class acc. (estimation set)", "mean_per_class")):
            before, after = report[f"{key}_before"], report[f"{key}_after"]
            fields.append((name, f"{before:.2f} -> {after:.2f} ({after - before:+.2f} pp)"))
    fields += [
        ("effective classes exp(H(q))", f"{report['effective_classes']:.1f}"),
        ("most likely", ", ".join(f"{c['class']} {c['q']:.4f}" for c in report["most_likely"])),
        ("least likely", ", ".join(f"{c['class']} {c['q']:.2e}" for c in report["least_likely"])),
        ("written", report["output"]),
    ]
    print_fields(f"Label prior of {report['input']}", fields)
