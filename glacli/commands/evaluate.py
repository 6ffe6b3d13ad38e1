"""``gla evaluate``: compare logits files on the same labelled samples (table, JSON, figure).

The metrics are computed by :mod:`glacli.metrics` while the rows stream from the store; the
JSON written here is the input of ``gla report`` and of reproduction scripts, so its layout
(documented in docs/evaluate.md, version :data:`SCHEMA_VERSION`) is a contract.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich import box
from rich.table import Table

from glacli import __version__, metrics, store
from glacli.app import app, err, fail, out, progress
from glacli.devices import resolve_device
from glacli.plots import evaluation_figure

SCHEMA = "gla-evaluate"
SCHEMA_VERSION = 1
RESERVED_TAGS = ("method",)
TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
CHUNK_BUDGET_BYTES = 16 * 2**20
"""Rows per chunk are sized so one chunk of float64 logits stays near this many bytes."""


@app.command("evaluate")
def evaluate_command(
    logits: Annotated[list[Path], typer.Argument(help="Logits files with labels, all on the same samples.",
                                                 show_default=False)],
    prior: Annotated[Path | None, typer.Option(
        "--prior", help="Prior file: adds head/medium/tail accuracy (thirds of classes ranked by q).")] = None,
    train: Annotated[Path | None, typer.Option(
        "--train", help="Training features file: adds many/medium/few-shot accuracy "
                        "(>100 / 20-100 / <20 training images).")] = None,
    json_out: Annotated[str | None, typer.Option(
        "--json", metavar="OUT.json", help="Write the results as JSON ('-' = stdout, instead of the table).")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="OUT.png", help="Per-class accuracy by class rank and a reliability diagram.")] = None,
    names: Annotated[list[str] | None, typer.Option(
        "--name", help="Name of each file in order (the method name in reports); default: file stems.")] = None,
    tags: Annotated[list[str] | None, typer.Option(
        "--tag", metavar="KEY=VALUE", help="Setting of this run stored in the JSON, e.g. --tag shots=4 "
                                           "--tag seed=1 (numbers are stored as numbers).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Compare logits files: top-1, top-5, mean per-class accuracy, NLL, ECE and group accuracies.

    Example:

        gla evaluate zs.h5 zs_debiased.h5 gla.h5 --prior prior.h5 --train train.h5 \\
            --name zero-shot --name debiased --name GLA --tag shots=16 --tag seed=1 \\
            --json results.json --plot results.png
    """
    names = _names(logits, names or [])
    tag_values = parse_tags(tags or [])
    torch_device = resolve_device(device)
    if json_out not in (None, "-"):
        store.check_output_path(json_out)
    if plot is not None:
        store.check_output_path(plot)

    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(store.read_rows(path, "logits")) for path in logits]
        for f in files:
            f.require_labels("to evaluate")
        first = files[0]
        for f in files[1:]:
            store.check_same_classnames(f.classnames, f.path, first.classnames, first.path)
            store.check_same_rows(f, first)
        groups, prior_info, train_info = _groups(prior, train, first)
        results = _measure(files, torch_device)

    payload = build_payload(files, names, results, groups, tag_values, prior_info, train_info)
    if json_out == "-":
        sys.stdout.write(dumps(payload))
    else:
        out.print(_table(names, results, groups, first.n_rows, first.n_classes))
    if json_out not in (None, "-"):
        store.write_text_atomic(json_out, dumps(payload))
        err.print(f"wrote {json_out}")
    if plot is not None:
        order, label = _plot_order(prior_info, train_info, first.n_classes)
        evaluation_figure(plot, names, [r.class_accuracy for r in results], order, label,
                          [r.reliability for r in results])
        err.print(f"wrote {plot}")


def parse_tags(tags: list[str]) -> dict[str, Any]:
    """``["shots=4", "seed=1", "data=bbc"]`` -> ``{"shots": 4, "seed": 1, "data": "bbc"}``."""
    parsed: dict[str, Any] = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not TAG_KEY.match(key) or not value:
            fail(f"--tag: expected KEY=VALUE with a name as KEY, got {tag!r}")
        if key in RESERVED_TAGS:
            fail(f"--tag: {key!r} is reserved (the method is the --name of each file)")
        if key in parsed:
            fail(f"--tag: {key!r} given twice")
        parsed[key] = _number_or_text(value)
    return parsed


def _number_or_text(value: str) -> int | float | str:
    if "_" in value:  # Python's int() accepts "1_000"; a tag value like "a_1" stays text
        return value
    for kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            continue
        if isinstance(number, float) and not math.isfinite(number):
            break
        return number
    return value


def _names(paths: list[Path], names: list[str]) -> list[str]:
    if names and len(names) != len(paths):
        fail(f"--name: got {len(names)} names for {len(paths)} files (give one per file, in order)")
    names = names or [p.stem for p in paths]
    seen: set[str] = set()
    for name in names:
        if not name.strip():
            fail("--name: names must not be empty")
        if name in seen:
            fail(f"two files are named {name!r}; give each file its own --name")
        seen.add(name)
    return names


def _groups(prior_path: Path | None, train_path: Path | None, first: store.RowFile
            ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None, dict[str, Any] | None]:
    groups: dict[str, np.ndarray] = {}
    prior_info = train_info = None
    if prior_path is not None:
        prior = store.read_prior(prior_path)
        store.check_same_classnames(prior.classnames, prior_path, first.classnames, first.path)
        groups.update(metrics.prior_groups(prior.prior))
        prior_info = {"path": str(prior_path), "gla_id": prior.gla_id, "q": prior.prior}
    if train_path is not None:
        with store.read_rows(train_path, "features") as train:
            labels = train.require_labels("to count training images per class")
            store.check_same_classnames(train.classnames, train.path, first.classnames, first.path)
            counts = metrics.class_counts(labels, first.n_classes)
            train_info = {"path": str(train_path), "gla_id": train.gla_id, "counts": counts}
        groups.update(metrics.shot_groups(counts))
    return groups, prior_info, train_info


def _measure(files: list[store.RowFile], device: torch.device) -> list[metrics.Metrics]:
    rows = store.chunk_rows(files[0].n_cols, itemsize=8, budget_bytes=CHUNK_BUDGET_BYTES)
    results = []
    with progress(transient=True) as bar:
        task = bar.add_task("evaluating", total=sum(f.n_rows for f in files))
        for f in files:
            acc = metrics.MetricAccumulator(f.n_classes, device=device)
            for chunk in f.iter_chunks(rows):
                acc.update(chunk.values, chunk.labels)
                bar.advance(task, chunk.stop - chunk.start)
            results.append(acc.result())
    return results


def build_payload(files: list[store.RowFile], names: list[str], results: list[metrics.Metrics],
                  groups: dict[str, np.ndarray], tags: dict[str, Any], prior_info: dict[str, Any] | None,
                  train_info: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON document of one ``evaluate`` run (schema in docs/evaluate.md)."""
    first = files[0]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "gla_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tags": tags,
        "n_samples": first.n_rows,
        "n_classes": first.n_classes,
        "classnames": first.classnames,
        "top5_k": results[0].k,
        "ece_bins": len(results[0].reliability.count),
        "prior": prior_info,
        "train": train_info,
        "groups": {name: {"rule": metrics.GROUP_RULES[name], "classes": classes}
                   for name, classes in groups.items()},
        "results": [{
            "name": name,
            "path": f.path,
            "gla_id": f.gla_id,
            "parents": list(f.attrs.get("parents", [])),
            "temperature": f.temperature,
            "metrics": metrics.summarise(r, groups),
            "per_class": {"accuracy": r.class_accuracy, "correct": r.class_correct, "count": r.class_count},
            "reliability": {"edges": r.reliability.edges, "count": r.reliability.count,
                            "confidence": r.reliability.confidence, "accuracy": r.reliability.accuracy},
        } for f, name, r in zip(files, names, results)],
    }


def dumps(payload: Any) -> str:
    """Strict JSON: arrays become lists, NaN (an empty group or bin) becomes null, and lists of
    numbers stay on one line so that 1000-class results remain readable."""
    return _dump(_plain(payload), 0) + "\n"


def _dump(value: Any, depth: int) -> str:
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dump(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(f"{inner}{_dump(v, depth + 1)}" for v in value) + f"\n{pad}]"
    return json.dumps(value, allow_nan=False, ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plot_order(prior_info: dict[str, Any] | None, train_info: dict[str, Any] | None,
                n_classes: int) -> tuple[np.ndarray, str]:
    if prior_info is not None:
        return metrics.rank_by(prior_info["q"]), "class rank by prior q (most likely first)"
    if train_info is not None:
        return metrics.rank_by(train_info["counts"]), "class rank by training images (most first)"
    return np.arange(n_classes), "class index"


def _table(names: list[str], results: list[metrics.Metrics], groups: dict[str, np.ndarray],
           n_samples: int, n_classes: int) -> Table:
    k = results[0].k
    keys = ["top1", "top5", "mean_per_class", "nll", "ece", *groups]
    sizes = ", ".join(f"{metrics.METRICS[g].short} {len(c)}" for g, c in groups.items())
    table = Table(title=f"{n_samples} samples, {n_classes} classes; accuracies and ECE in %"
                        + (f"\nclasses per group: {sizes}" if sizes else ""),
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=0, show_edge=False)
    rows = [[metrics.format_metric(key, value) or "-" for key, value in metrics.summarise(r, groups).items()]
            for r in results]
    table.add_column("file", no_wrap=True)
    for j, key in enumerate(keys):
        header = metrics.METRICS[key].short if key != "top5" else f"top-{k}"
        # numbers never truncate; headers wrap instead, so 11 columns fit 80 characters
        table.add_column(header, justify="right", min_width=max(len(row[j]) for row in rows))
    for name, row in zip(names, rows):
        table.add_row(name, *row)
    return table

