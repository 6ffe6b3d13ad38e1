"""``evaluate``: metrics of logits files on the same labelled samples, and the results document.

This module owns the results JSON (schema ``gla-evaluate``, documented in docs/evaluate.md): it
writes it (:func:`evaluate_files`, :func:`dumps`) and reads it back for ``gla report``
(:func:`read_records`), so writer and reader cannot drift. The metrics are computed by
:mod:`glacli.metrics` while the rows stream from the store.

Version 2 names the top-k metric ``top{k}`` (``top5`` whenever there are 5 classes or more, as in
version 1) and records k as ``top_k``; version 1 called it ``top5`` for any k, with ``top5_k``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from glacli import __version__, chunking, metrics, store
from glacli.devices import resolve_device
from glacli.errors import GlaInputError
from glacli.plots import evaluation_figure
from glacli.report import METHOD_KEY
from glacli.types import Evaluation, Metrics, Record, Reporter
from glacli.validation import check_same_classnames

SCHEMA = "gla-evaluate"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
STDOUT = "-"


def evaluate_files(logits: list[Path], *, prior: Path | None = None, train: Path | None = None,
                   names: list[str] | None = None, tags: list[str] | None = None, device: str = "auto",
                   json_path: str | None = None, plot: Path | None = None, reporter: Reporter = Reporter()
                   ) -> Evaluation:
    """Measure every logits file (labels needed; same rows and classes in all), with head / medium /
    tail groups by ``prior`` and many / medium / few-shot groups by ``train``. Writes the results
    document to ``json_path`` (unless it is ``-``: the caller prints it) and the figure to ``plot``."""
    names = _names(logits, names or [])
    tag_values = parse_tags(tags or [])
    torch_device = resolve_device(device)
    if json_path not in (None, STDOUT):
        store.check_output_path(json_path)
    if plot is not None:
        store.check_output_path(plot)
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(store.read_rows(path, "logits")) for path in logits]
        for f in files:
            f.require_labels("to evaluate")
        first = files[0]
        for f in files[1:]:
            check_same_classnames(f.classnames, f.path, first.classnames, first.path)
            store.check_same_rows(f, first)
        groups, prior_info, train_info = _groups(prior, train, first)
        results = _measure(files, torch_device.type, str(torch_device), reporter)
        document = _document(files, names, results, groups, tag_values, prior_info, train_info)
    if json_path not in (None, STDOUT):
        store.write_text_atomic(json_path, dumps(document))
        reporter.message(f"wrote {json_path}")
    if plot is not None:
        order, label = _plot_order(prior_info, train_info, first.n_classes)
        evaluation_figure(plot, names, [r.class_accuracy for r in results], order, label,
                          [r.reliability for r in results])
        reporter.message(f"wrote {plot}")
    return Evaluation(names, results, groups, document, first.n_rows, first.n_classes)


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


def _groups(prior_path: Path | None, train_path: Path | None, first: store.RowFile
            ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None, dict[str, Any] | None]:
    groups: dict[str, np.ndarray] = {}
    prior_info = train_info = None
    if prior_path is not None:
        prior = store.read_prior(prior_path)
        check_same_classnames(prior.classnames, prior_path, first.classnames, first.path)
        groups.update(metrics.prior_groups(prior.prior))
        prior_info = {"path": str(prior_path), "gla_id": prior.gla_id, "q": prior.prior}
    if train_path is not None:
        with store.read_rows(train_path, "features") as train:
            labels = train.require_labels("to count training images per class")
            check_same_classnames(train.classnames, train.path, first.classnames, first.path)
            counts = metrics.class_counts(labels, first.n_classes)
            train_info = {"path": str(train_path), "gla_id": train.gla_id, "counts": counts}
        groups.update(metrics.shot_groups(counts))
    return groups, prior_info, train_info


def _measure(files: list[store.RowFile], device_type: str, device: str, reporter: Reporter) -> list[Metrics]:
    rows = chunking.compute_rows(8 * files[0].n_cols, device_type)
    results = []
    reporter.start("evaluating", sum(f.n_rows for f in files))
    for f in files:
        acc = metrics.MetricAccumulator(f.n_classes, device=device)
        for chunk in f.iter_chunks(rows):
            acc.update(chunk.values, chunk.labels)
            reporter.advance(chunk.stop - chunk.start)
        results.append(acc.result())
    return results


def _document(files: list[store.RowFile], names: list[str], results: list[Metrics], groups: dict[str, np.ndarray],
              tags: dict[str, Any], prior_info: dict[str, Any] | None, train_info: dict[str, Any] | None
              ) -> dict[str, Any]:
    """The results document of one run (schema in docs/evaluate.md)."""
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
        "top_k": results[0].k,
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
    return _dump(_plain(document), 0) + "\n"


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
    records = []
    for k, result in enumerate(results):
        if not isinstance(result, dict) or not isinstance(result.get("name"), str) \
                or not isinstance(result.get("metrics"), dict):
            raise GlaInputError(f"results[{k}] lacks a 'name' string or a 'metrics' object", source)
        records.append(Record({METHOD_KEY: result["name"], **tags}, result["metrics"], source))
    return records
