"""``evaluate``: metrics of logits files on the same labelled samples, and the results document.

The metrics and the document are :func:`glacli.api.evaluate` (its schema:
:mod:`glacli.io.results_json`); this module adds the files: it streams the logits to it (each
file read once), reads the prior, training and target files it groups and compares by, records
where each result came from, warns about rows a fit has seen, and writes the document and the figure.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glacli import api
from glacli.base import chunking
from glacli.base.chunking import LogitSource
from glacli.base.devices import compute_device
from glacli.base.errors import GlaInputError
from glacli.base.types import Evaluation, Prior, Reliability, Reporter
from glacli.base.validation import check_same_classnames, require_count
from glacli.core import metrics
from glacli.core.report import METHOD_KEY
from glacli.io.crossfile import check_same_rows
from glacli.io.formats.proportions import read_pretraining_prior, read_target_distribution
from glacli.io.outputs import check_outputs, write_text_atomic, writer_lock
from glacli.io.plots import GroupBars, evaluation_figure
from glacli.io.results_json import dumps
from glacli.io.rowfile import RowFile, read_rows

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
              train: Path | None, target_prior: Path | None, compute: str, resampling: BootstrapOptions,
              shots: ShotThresholds, json_path: Path | None, plot: Path | None, reporter: Reporter) -> Evaluation:
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(read_rows(path, "logits")) for path in logits]
        for f in files:
            f.require_labels("to evaluate")
        first = files[0]
        for f in files[1:]:
            check_same_classnames(f.classnames, f.path, first.classnames, first.path)
            check_same_rows(f, first)
        q = _read_prior(prior, first)
        counts, train_id = _train_counts(train, first)
        target = _read_target(target_prior, first)
        rows = chunking.compute_rows(8 * first.n_cols, compute.split(":")[0])
        document = api.evaluate(
            {name: _streamed(f, rows) for name, f in zip(names, files)}, first.labels, prior=q,
            train_counts=counts, many_shot_above=shots.many_above, few_shot_below=shots.few_below,
            target_prior=target, bootstrap=resampling.resamples, baseline=resampling.baseline, seed=resampling.seed,
            confidence=resampling.confidence, stratified=resampling.stratified, classnames=first.classnames,
            tags=tag_values, label_shift=any(f.attrs.get("target_prior", "uniform") != "uniform" for f in files),
            device=compute, progress=reporter)
        for key, path in (("prior", prior), ("train", train), ("target_prior", target_prior)):
            if path is not None:  # the records' ids came along; the counts carry none
                document[key]["path"] = str(path)
        if train is not None:
            document["train"]["gla_id"] = train_id
        for result, f in zip(document["results"], files):
            result.update(path=f.path, gla_id=f.gla_id, parents=list(f.attrs.get("parents", [])),
                          temperature=f.temperature)
        document["warnings"] = _leakage(files) + document["warnings"]
        for warning in document["warnings"]:
            reporter.warning(warning)
    if json_path is not None:
        write_text_atomic(json_path, dumps(document))
        reporter.message(f"wrote {json_path}")
    if plot is not None:
        _plot(plot, document)
        reporter.message(f"wrote {plot}")
    groups = {name: np.asarray(group["classes"], dtype=np.int64) for name, group in document["groups"].items()}
    return Evaluation(names, groups, document, first.n_rows, first.n_classes)


def _streamed(rows: RowFile, block: int) -> LogitSource:
    """The logits of a file in blocks of ``block`` rows, read once by the evaluation."""
    return LogitSource(lambda: (chunk.values for chunk in rows.iter_chunks(block)), rows.n_rows, rows.n_classes)


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


def _read_prior(path: Path | None, first: RowFile) -> Prior | None:
    """The pre-training q of ``--prior`` (head / medium / tail groups)."""
    if path is None:
        return None
    prior = read_pretraining_prior(path)
    check_same_classnames(prior.classnames, path, first.classnames, first.path)
    return prior


def _train_counts(path: Path | None, first: RowFile) -> tuple[np.ndarray | None, str]:
    """Training images per class of ``--train`` (many / medium / few-shot groups), and the file's id."""
    if path is None:
        return None, ""
    with read_rows(path, "features") as train:
        labels = train.require_labels("to count training images per class")
        check_same_classnames(train.classnames, train.path, first.classnames, first.path)
        return metrics.class_counts(labels, first.n_classes), train.gla_id


def _read_target(path: Path | None, first: RowFile) -> Prior | None:
    """The estimated test label distribution of ``--target-prior``, compared with the evaluated rows' labels."""
    if path is None:
        return None
    estimate = read_target_distribution(path)
    check_same_classnames(estimate.classnames, path, first.classnames, first.path)
    return estimate


def _plot(path: Path, document: dict[str, Any]) -> None:
    """The figure of a results document: what it shows is what the JSON holds."""
    results = document["results"]
    order, label = _plot_order(document["prior"], document["train"], document["n_classes"])
    evaluation_figure(path, [r["name"] for r in results],
                      [np.asarray(r["per_class"]["accuracy"], dtype=np.float64) for r in results], order, label,
                      [Reliability(**{key: np.asarray(values, dtype=np.float64)
                                      for key, values in r["reliability"].items()}) for r in results],
                      _group_bars(document))


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
