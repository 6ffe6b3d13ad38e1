"""The results JSON of ``gla evaluate`` (schema ``gla-evaluate``, documented in docs/evaluate.md):
built here (:func:`build_document`, for :func:`glacli.api.evaluate`), written (:func:`dumps`) and
read back for ``gla report`` (:func:`load_document`, :func:`read_records`), so that writer and
reader cannot drift.

Version 2 names the top-k metric ``top{k}`` (``top5`` whenever there are 5 classes or more, as in
version 1) and records k as ``top_k``; version 1 called it ``top5`` for any k, with ``top5_k``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glacli import __version__
from glacli.base.errors import GlaInputError
from glacli.base.types import Metrics, Record
from glacli.core.metrics import FEW_SHOT_BELOW, MANY_SHOT_ABOVE, group_rules
from glacli.core.report import METHOD_KEY

SCHEMA = "gla-evaluate"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


def build_document(names: Sequence[str], results: Sequence[Metrics], summaries: Sequence[dict[str, float]],
                   resampled: Sequence[dict[str, Any]] | None, *, classnames: Sequence[str],
                   groups: dict[str, np.ndarray], tags: dict[str, Any], inputs: dict[str, dict[str, Any] | None],
                   bootstrap: dict[str, Any] | None, label_shift: bool, warnings: list[str]) -> dict[str, Any]:
    """The results document of one evaluation, as JSON values (:func:`json_values`).

    ``inputs`` holds the ``prior``, ``train`` and ``target_prior`` entries (None where not given);
    every result has no file (``path`` None, ``gla_id`` empty, temperature 1): ``gla evaluate``
    fills those in from the files it read."""
    train = inputs["train"] or {}
    rules = group_rules(train.get("many_shot_above", MANY_SHOT_ABOVE), train.get("few_shot_below", FEW_SHOT_BELOW))
    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "gla_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tags": tags,
        "n_samples": results[0].n_samples,
        "n_classes": len(classnames),
        "classnames": list(classnames),
        "top_k": results[0].k,
        "ece_bins": len(results[0].reliability.count),
        "prior": inputs["prior"],
        "train": inputs["train"],
        "target_prior": inputs["target_prior"],
        "bootstrap": bootstrap,
        "groups": {name: {"rule": rules[name], "classes": classes} for name, classes in groups.items()},
        "results": [{
            "name": name,
            "path": None,
            "gla_id": "",
            "parents": [],
            "temperature": 1.0,
            "metrics": summary,
            **(resampled[i] if resampled else {}),
            "per_class": {"accuracy": r.class_accuracy, "correct": r.class_correct, "count": r.class_count},
            "reliability": {"edges": r.reliability.edges, "count": r.reliability.count,
                            "confidence": r.reliability.confidence, "accuracy": r.reliability.accuracy},
        } for i, (name, r, summary) in enumerate(zip(names, results, summaries))],
        "label_shift": label_shift,
        "warnings": warnings,
    }
    return json_values(document)


def json_values(value: Any) -> Any:
    """JSON values: arrays become lists, NaN (an empty group or bin) None, as in the written document."""
    if isinstance(value, dict):
        return {k: json_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_values(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_values(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
