"""``evaluate``: metrics of logits files on the same labelled samples, and the results document.

This module owns the results JSON (schema ``gla-evaluate``, documented in docs/evaluate.md): it
writes it (:func:`evaluate_files`, :func:`dumps`) and reads it back for ``gla report``
(:func:`read_records`), so writer and reader cannot drift. The metrics are computed by
:mod:`glacli.core.metrics` while the rows stream from the file; with a bootstrap, the per-row values
kept on the way are resampled by :mod:`glacli.core.bootstrap` (the logits are read once).

Version 2 names the top-k metric ``top{k}`` (``top5`` whenever there are 5 classes or more, as in
version 1) and records k as ``top_k``; version 1 called it ``top5`` for any k, with ``top5_k``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glacli import __version__
from glacli.api import json_values
from glacli.base import chunking
from glacli.base.devices import compute_device
from glacli.base.errors import GlaInputError
from glacli.base.types import Evaluation, Metrics, Record, Reporter
from glacli.base.validation import check_same_classnames, require_count
from glacli.core import bootstrap
from glacli.core import metrics
from glacli.core.report import METHOD_KEY
from glacli.io.crossfile import check_same_rows
from glacli.io.formats.proportions import read_pretraining_prior, read_target_distribution
from glacli.io.outputs import check_outputs, write_text_atomic, writer_lock
from glacli.io.plots import GroupBars, evaluation_figure
from glacli.io.rowfile import RowFile, read_rows

SCHEMA = "gla-evaluate"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class BootstrapOptions:
    """``--bootstrap N``: resamples of the test rows (0: none), their seed, the interval's
    confidence, stratification by class, and the method that differences are taken against."""

    resamples: int = 0
    seed: int = 0
    confidence: float = 0.95
    stratified: bool = True
    baseline: str | None = None


@dataclass(frozen=True)
class ShotThresholds:
    """Many-shot: more than ``many_above`` training images; few-shot: fewer than ``few_below``."""

    many_above: int = metrics.MANY_SHOT_ABOVE
    few_below: int = metrics.FEW_SHOT_BELOW


def evaluate_files(logits: list[Path], *, prior: Path | None = None, train: Path | None = None,
                   target_prior: Path | None = None, names: list[str] | None = None, tags: list[str] | None = None,
                   device: str = "auto", resampling: BootstrapOptions = BootstrapOptions(),
                   shots: ShotThresholds = ShotThresholds(), json_path: Path | None = None,
                   plot: Path | None = None, reporter: Reporter = Reporter()) -> Evaluation:
    """Measure every logits file (labels needed; same rows and classes in all), with head / medium /
    tail groups by ``prior``, many / medium / few-shot groups by ``train``, the error of the
    estimated label distribution ``target_prior`` and bootstrap intervals. Writes the results
    document to ``json_path`` and the figure to ``plot``, both under one writer lock (a second run writing
    either is refused), so they always come from the same run."""
    names = _names(logits, names or [])
    tag_values = parse_tags(tags or [])
    _check_resampling(resampling, names)
    _check_shots(shots)
    compute = compute_device(device)
    check_outputs(json_path, plot)
    with writer_lock(json_path, plot):
        return _evaluate(logits, names, tag_values, prior, train, target_prior, compute, resampling, shots,
                         json_path, plot, reporter)


def _evaluate(logits: list[Path], names: list[str], tag_values: dict[str, Any], prior: Path | None,
              train: Path | None, target_prior: Path | None, compute: Any, resampling: BootstrapOptions,
              shots: ShotThresholds, json_path: Path | None, plot: Path | None, reporter: Reporter) -> Evaluation:
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(read_rows(path, "logits")) for path in logits]
        for f in files:
            f.require_labels("to evaluate")
        first = files[0]
        for f in files[1:]:
            check_same_classnames(f.classnames, f.path, first.classnames, first.path)
            check_same_rows(f, first)
        groups, prior_info, train_info = _groups(prior, train, first, shots)
        target_info = _target_prior(target_prior, first)
        results, rows = _measure(files, compute, resampling.resamples > 0, reporter)
        summaries = [metrics.summarise(r, groups) for r in results]
        resampled = _resample(rows, first.labels, results[0], groups, summaries, names, resampling, reporter)
        document = _document(files, names, results, summaries, groups, tag_values,
                             {"prior": prior_info, "train": train_info, "target_prior": target_info},
                             resampled, resampling)
        shifted = target_info is not None or any(f.attrs.get("target_prior", "uniform") != "uniform" for f in files)
        document["label_shift"] = shifted
        document["warnings"] = _leakage(files) + (_majority_flags(names, summaries, first.n_classes,
                                                                  resampling.baseline) if shifted else [])
        for warning in document["warnings"]:
            reporter.warning(warning)
    if json_path is not None:
        write_text_atomic(json_path, dumps(document))
        reporter.message(f"wrote {json_path}")
    if plot is not None:
        order, label = _plot_order(prior_info, train_info, first.n_classes)
        evaluation_figure(plot, names, [r.class_accuracy for r in results], order, label,
                          [r.reliability for r in results], _group_bars(document))
        reporter.message(f"wrote {plot}")
    return Evaluation(names, results, groups, document, first.n_rows, first.n_classes)


LEAK_ATTRS = {"head_fitted_rows": "fit its head", "prior_fitted_rows": "estimate its q"}
"""Attributes of a logits file (``gla logits``, ``gla combine``) counting rows a fit has seen."""


def _leakage(files: list[RowFile]) -> list[str]:
    """One line per file whose rows include rows its head or its q was fitted on."""
    warnings = []
    for f in files:
        used = [f"{int(f.attrs[key])} of its {f.n_rows} rows were used to {why}" for key, why in LEAK_ATTRS.items()
                if int(f.attrs.get(key, 0) or 0)]
        if used:
            warnings.append(f"{f.path}: {'; '.join(used)}: its accuracy is overstated; evaluate on rows no fit "
                            "has seen")
    return warnings


def _majority_flags(names: list[str], summaries: list[dict[str, float]], n_classes: int,
                    baseline: str | None) -> list[str]:
    """Under label shift top-1 rewards predicting the frequent classes: flag a method whose top-1 rises
    over the baseline (``--baseline``, else the first file) while its mean per-class accuracy falls below
    chance (1/C) + 1 pp, i.e. it no longer tells the classes apart."""
    base = names.index(baseline) if baseline in names else 0
    floor = 1.0 / n_classes + 0.01
    return [f"{name}: top-1 rises over {names[base]} ({100 * summary['top1'] - 100 * summaries[base]['top1']:+.2f} "
            f"pp) while mean per-class accuracy is {100 * summary['mean_per_class']:.2f}%, below chance + 1 pp "
            f"({100 * floor:.2f}%): it gains by predicting the frequent classes (docs/label-shift.md)"
            for i, (name, summary) in enumerate(zip(names, summaries))
            if i != base and summary["top1"] > summaries[base]["top1"] and summary["mean_per_class"] < floor]


def _check_resampling(options: BootstrapOptions, names: list[str]) -> None:
    require_count(options.resamples, "--bootstrap", minimum=0)
    require_count(options.seed, "--bootstrap-seed", minimum=0)
    if not 0 < options.confidence < 1:
        raise GlaInputError(f"--confidence: expected a number between 0 and 1 (e.g. 0.95), got {options.confidence}")
    if options.baseline is not None:
        if not options.resamples:
            raise GlaInputError("--baseline compares methods on bootstrap resamples: give --bootstrap N too")
        if options.baseline not in names:
            raise GlaInputError(f"--baseline: no file is named {options.baseline!r} (names: {', '.join(names)})")


def _check_shots(shots: ShotThresholds) -> None:
    require_count(shots.many_above, "--many-shot-above", minimum=0)
    require_count(shots.few_below, "--few-shot-below", minimum=0)
    if shots.few_below > shots.many_above:
        raise GlaInputError(f"--few-shot-below ({shots.few_below}) must not exceed --many-shot-above "
                            f"({shots.many_above}): a class would be both many-shot and few-shot")


def parse_tags(tags: list[str]) -> dict[str, Any]:
    """``["shots=4", "seed=1", "data=bbc"]`` -> ``{"shots": 4, "seed": 1, "data": "bbc"}``."""
    parsed: dict[str, Any] = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not TAG_KEY.match(key) or not value:
            raise GlaInputError(f"--tag: expected KEY=VALUE with a name as KEY, got {tag!r}")
        if key == METHOD_KEY:
            raise GlaInputError(f"--tag: {key!r} is reserved (the method is the --name of each file)")
        if key in parsed:
            raise GlaInputError(f"--tag: {key!r} given twice")
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
        raise GlaInputError(f"--name: got {len(names)} names for {len(paths)} files (give one per file, in order)")
    names = names or [p.stem for p in paths]
    seen: set[str] = set()
    for name in names:
        if not name.strip():
            raise GlaInputError("--name: names must not be empty")
        if name in seen:
            raise GlaInputError(f"two files are named {name!r}; give each file its own --name")
        seen.add(name)
    return names


def _groups(prior_path: Path | None, train_path: Path | None, first: RowFile, shots: ShotThresholds
            ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None, dict[str, Any] | None]:
    groups: dict[str, np.ndarray] = {}
    prior_info = train_info = None
    if prior_path is not None:
        prior = read_pretraining_prior(prior_path)
        check_same_classnames(prior.classnames, prior_path, first.classnames, first.path)
        groups.update(metrics.prior_groups(prior.prior))
        prior_info = {"path": str(prior_path), "gla_id": prior.gla_id, "q": prior.prior}
    if train_path is not None:
        with read_rows(train_path, "features") as train:
            labels = train.require_labels("to count training images per class")
            check_same_classnames(train.classnames, train.path, first.classnames, first.path)
            counts = metrics.class_counts(labels, first.n_classes)
            train_info = {"path": str(train_path), "gla_id": train.gla_id, "counts": counts,
                          "many_shot_above": shots.many_above, "few_shot_below": shots.few_below}
        groups.update(metrics.shot_groups(counts, shots.many_above, shots.few_below))
    return groups, prior_info, train_info


def _target_prior(path: Path | None, first: RowFile) -> dict[str, Any] | None:
    """An estimated test label distribution against the label proportions of the evaluated rows."""
    if path is None:
        return None
    estimate = read_target_distribution(path)
    check_same_classnames(estimate.classnames, path, first.classnames, first.path)
    true = metrics.class_counts(first.labels, first.n_classes) / first.n_rows
    error = np.abs(estimate.prior - true)
    return {"path": str(path), "gla_id": estimate.gla_id, "method": estimate.method,
            "estimate": estimate.prior, "true": true, "l1": float(error.sum()), "max_abs_error": float(error.max())}


def _measure(files: list[RowFile], device: str, keep_rows: bool, reporter: Reporter
             ) -> tuple[list[Metrics], list[metrics.RowValues]]:
    """The metrics of every file, and with ``keep_rows`` the per-row values the bootstrap resamples."""
    device_type = device.split(":")[0]
    rows = chunking.compute_rows(8 * files[0].n_cols, device_type)
    to_device = _mover(device)
    results, row_values = [], []
    reporter.start("evaluating", sum(f.n_rows for f in files))
    for f in files:
        acc = metrics.MetricAccumulator(f.n_classes, keep_rows=keep_rows)
        for chunk in f.iter_chunks(rows):
            acc.update(to_device(chunk.values), to_device(chunk.labels))
            reporter.advance(chunk.stop - chunk.start)
        results.append(acc.result())
        if keep_rows:
            row_values.append(acc.rows())
    return results, row_values


def _mover(device: str) -> Any:
    """How a numpy block reaches ``device`` (torch is imported only for a GPU)."""
    if device == "cpu":
        return lambda array: array
    import torch

    return lambda array: torch.from_numpy(array).to(device)


def _resample(rows: list[metrics.RowValues], labels: np.ndarray, first: Metrics, groups: dict[str, np.ndarray],
              summaries: list[dict[str, float]], names: list[str], options: BootstrapOptions, reporter: Reporter
              ) -> list[dict[str, Any]] | None:
    """Per result: ``ci`` (interval per metric) and, against the baseline, ``vs_baseline``."""
    if not options.resamples:
        return None
    reporter.start("bootstrap resamples", options.resamples)
    block = chunking.compute_rows(6 * 8 * len(labels))  # counts, two key arrays, weighted copies
    draws = bootstrap.resampled_metrics(rows, labels, first.class_count.size, first.k,
                                        len(first.reliability.count), groups, options.resamples, options.seed,
                                        options.stratified, block, reporter.advance)
    out = [{"ci": bootstrap.intervals(d, options.confidence)} for d in draws]
    if options.baseline is not None:
        base = names.index(options.baseline)
        for i, entry in enumerate(out):
            if i != base:
                paired = bootstrap.paired_intervals(draws[i], draws[base], options.confidence)
                entry["vs_baseline"] = {key: {"difference": summaries[i][key] - summaries[base][key],
                                              "ci": paired[key]} for key in summaries[i]}
    return out


def _bootstrap_info(options: BootstrapOptions) -> dict[str, Any] | None:
    if not options.resamples:
        return None
    return {"resamples": options.resamples, "seed": options.seed, "confidence": options.confidence,
            "sampling": "stratified" if options.stratified else "plain", "interval": "percentile",
            "baseline": options.baseline}


def _document(files: list[RowFile], names: list[str], results: list[Metrics], summaries: list[dict[str, float]],
              groups: dict[str, np.ndarray], tags: dict[str, Any], inputs: dict[str, dict[str, Any] | None],
              resampled: list[dict[str, Any]] | None, resampling: BootstrapOptions) -> dict[str, Any]:
    """The results document of one run (schema in docs/evaluate.md)."""
    first = files[0]
    train = inputs["train"] or {}
    rules = metrics.group_rules(train.get("many_shot_above", metrics.MANY_SHOT_ABOVE),
                                train.get("few_shot_below", metrics.FEW_SHOT_BELOW))
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "gla_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tags": tags,
        "n_samples": first.n_rows,
        "n_classes": first.n_classes,
        "classnames": first.classnames,
        "top_k": results[0].k,
        "ece_bins": len(results[0].reliability.count),
        **inputs,
        "bootstrap": _bootstrap_info(resampling),
        "groups": {name: {"rule": rules[name], "classes": classes} for name, classes in groups.items()},
        "results": [{
            "name": name,
            "path": f.path,
            "gla_id": f.gla_id,
            "parents": list(f.attrs.get("parents", [])),
            "temperature": f.temperature,
            "metrics": summary,
            **(resampled[i] if resampled else {}),
            "per_class": {"accuracy": r.class_accuracy, "correct": r.class_correct, "count": r.class_count},
            "reliability": {"edges": r.reliability.edges, "count": r.reliability.count,
                            "confidence": r.reliability.confidence, "accuracy": r.reliability.accuracy},
        } for i, (f, name, r, summary) in enumerate(zip(files, names, results, summaries))],
    }


def _group_bars(document: dict[str, Any]) -> list[GroupBars]:
    """The group accuracies of each result, with their intervals where the document has them."""
    keys = list(document["groups"])
    return [GroupBars(result["name"], keys, [result["metrics"][k] for k in keys],
                      [result["ci"][k] for k in keys] if "ci" in result else None)
            for result in document["results"]]


def _plot_order(prior_info: dict[str, Any] | None, train_info: dict[str, Any] | None,
                n_classes: int) -> tuple[np.ndarray, str]:
    if prior_info is not None:
        return metrics.rank_by(prior_info["q"]), "class rank by prior q (most likely first)"
    if train_info is not None:
        return metrics.rank_by(train_info["counts"]), "class rank by training images (most first)"
    return np.arange(n_classes), "class index"


# --------------------------------------------------------------------------- the document as text


def dumps(document: Any) -> str:
    """Strict JSON: arrays become lists, NaN (an empty group or bin) becomes null, and lists of
    numbers stay on one line so that 1000-class results remain readable."""
    return _dump(json_values(document), 0) + "\n"


def _dump(value: Any, depth: int) -> str:
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dump(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(f"{inner}{_dump(v, depth + 1)}" for v in value) + f"\n{pad}]"
    return json.dumps(value, allow_nan=False, ensure_ascii=False)



def load_document(path: Path) -> Any:
    """A results file, parsed (not yet checked: :func:`read_records` does that)."""
    if not path.is_file():
        raise GlaInputError("no such file" if not path.exists() else "is not a file", path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise GlaInputError("is not UTF-8 text (expected evaluate's JSON)", path) from None
    except json.JSONDecodeError as exc:
        raise GlaInputError(f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", path) from None


def read_records(document: Any, source: str) -> list[Record]:
    """Check one results document (already parsed) and return one record per result."""
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise GlaInputError(f"not a 'gla evaluate --json' result (no \"schema\": \"{SCHEMA}\")", source)
    version = document.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise GlaInputError(f"schema_version {version!r} is not supported (expected "
                            f"{', '.join(map(str, READABLE_VERSIONS))})", source)
    tags = document.get("tags")
    results = document.get("results")
    if not isinstance(tags, dict):
        raise GlaInputError("field 'tags' is missing or not an object", source)
    if not isinstance(results, list) or not results:
        raise GlaInputError("field 'results' is missing or empty", source)
    resampling = document.get("bootstrap") or {}
    if not isinstance(resampling, dict):
        raise GlaInputError("field 'bootstrap' is not an object", source)
    records = []
    for k, result in enumerate(results):
        if not isinstance(result, dict) or not isinstance(result.get("name"), str) \
                or not isinstance(result.get("metrics"), dict):
            raise GlaInputError(f"results[{k}] lacks a 'name' string or a 'metrics' object", source)
        ci, vs_baseline = result.get("ci", {}), result.get("vs_baseline", {})
        if not isinstance(ci, dict) or not isinstance(vs_baseline, dict):
            raise GlaInputError(f"results[{k}]: 'ci' or 'vs_baseline' is not an object", source)
        records.append(Record({METHOD_KEY: result["name"], **tags}, result["metrics"], source,
                              ci, vs_baseline, resampling.get("baseline")))
    return records
