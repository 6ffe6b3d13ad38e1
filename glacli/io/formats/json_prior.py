"""Priors as JSON: ``{"classnames": [...], "prior": [...], "attributes": {...}}`` or a bare list of numbers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Prior
from glacli.io.outputs import atomic_output


def read_prior(path: Path, key: str | None) -> tuple[list[str] | None, Any, dict[str, Any]]:
    """(class names or None, prior values, attributes); a top-level ``temperature`` joins the attributes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GlaInputError(f"is not valid JSON: {exc}", path) from exc
    if isinstance(data, list):
        return None, _numbers(data, path), {}
    if not isinstance(data, dict) or "prior" not in data:
        raise GlaInputError('expected {"classnames": [...], "prior": [...]} or a list of numbers', path)
    names = data.get("classnames")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise GlaInputError("'classnames' must be a list of strings", path)
    attrs = data.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise GlaInputError("'attributes' must be an object", path)
    if "temperature" in data:
        attrs = {**attrs, "temperature": data["temperature"]}
    if "temperature" in attrs and not isinstance(attrs["temperature"], (int, float)):
        raise GlaInputError("'temperature' must be a number", path)
    return names, _numbers(data["prior"], path), attrs


def _numbers(values: Any, path: Path) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise GlaInputError("the prior must be a flat list of numbers", path)
    return np.asarray(values, dtype=np.float64)


def write_prior(prior: Prior, output: Path) -> list[str]:
    """Class names, q and every attribute of the prior file (its provenance included)."""
    payload = {"classnames": prior.classnames, "prior": prior.prior.tolist(), "attributes": prior.attrs}
    with atomic_output(output) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return ["classnames", "prior", "attributes"]
