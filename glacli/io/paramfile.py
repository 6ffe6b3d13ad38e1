"""The parameter kinds, a prior (``q``, or a test label distribution) and a linear head
(``W``, ``b``): small files read and written whole (docs/format.md)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import HEAD_TYPES, Head, Prior
from glacli.base.validation import require_finite, require_log_prior, require_positive, require_prior
from glacli.io.h5file import (
    PROVENANCE_ATTRS,
    atomic_h5,
    check_header,
    get_attrs,
    open_h5,
    read_classnames,
    read_errors,
    read_temperature,
    require_dataset,
    write_strings,
)


def _kind_attrs(attrs: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """A file's own attributes: what the caller carried over, then ``fixed``, minus provenance
    (which :func:`atomic_h5` writes anew)."""
    merged = {**attrs, **fixed}
    return {k: v for k, v in merged.items() if k not in PROVENANCE_ATTRS}


def _check_prior_pair(values: np.ndarray, log_values: np.ndarray, path: str | Path | None) -> None:
    """``prior`` must be ``exp(log_prior)``: two datasets that disagree mean a damaged or hand-edited file."""
    if values.shape != log_values.shape:
        raise GlaInputError(f"log_prior has shape {log_values.shape}, prior has {values.shape}", path)
    bad = ~np.isclose(values, np.exp(log_values), rtol=1e-9, atol=1e-300)
    if bad.any():
        k = int(np.argmax(bad))
        raise GlaInputError(f"prior and log_prior disagree at entry {k} ({values[k]:g} vs exp {log_values[k]:g})", path)


def write_prior(path: str | Path, prior: Prior, parents: Iterable[str] = (),
                datasets: dict[str, np.ndarray] | None = None) -> None:
    """Write ``log_prior`` (the exact solution, finite) and ``prior`` (its exp), and any other ``datasets``
    (e.g. ``fitted_id_hashes``)."""
    log_values = require_log_prior(prior.log_prior, None)
    _check_prior_pair(prior.prior, log_values, None)
    attrs = _kind_attrs(prior.attrs, {
        "temperature": require_positive(prior.temperature, "temperature"), "method": prior.method,
        "converged": bool(prior.converged), "max_moment_gap": float(prior.max_moment_gap),
        "iterations": int(prior.iterations),
        "logits_temperature": require_positive(prior.logits_temperature, "logits_temperature")})
    with atomic_h5(path, "prior", parents, attrs) as f:
        f.create_dataset("prior", data=np.asarray(prior.prior, dtype=np.float64))
        f.create_dataset("log_prior", data=log_values)
        write_strings(f, "classnames", prior.classnames)
        _write_datasets(f, datasets)


def read_prior(path: str | Path) -> Prior:
    """A prior file; ``log_prior`` is read where present (older files have ``prior`` only)."""
    with open_h5(path) as f, read_errors(path):
        check_header(f, path, ("prior",))
        values = require_dataset(f, "prior", path, 1, "float")[()].astype(np.float64)
        log_values = (require_dataset(f, "log_prior", path, 1, "float")[()].astype(np.float64)
                      if "log_prior" in f else None)
        classnames = read_classnames(f, path, len(values))
        attrs = get_attrs(f)
    if log_values is None:
        require_prior(values, path)
    else:
        require_log_prior(log_values, path)
        _check_prior_pair(values, log_values, path)
    return Prior(prior=values, classnames=classnames, temperature=read_temperature(attrs, "temperature", path),
                 method=str(attrs.get("method", "")), converged=bool(attrs.get("converged", True)),
                 max_moment_gap=float(attrs.get("max_moment_gap", 0.0)),
                 iterations=int(attrs.get("iterations", 0)), attrs=attrs, log_prior=log_values,
                 logits_temperature=read_temperature(attrs, "logits_temperature", path))


def write_head(path: str | Path, head: Head, parents: Iterable[str] = (),
               datasets: dict[str, np.ndarray] | None = None) -> None:
    weight = np.asarray(head.weight, dtype=np.float32)
    bias = np.asarray(head.bias, dtype=np.float32)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(head.classnames) != weight.shape[0]:
        raise ValueError("head weight [C, D], bias [C] and classnames [C] do not agree")
    if head.head_type not in HEAD_TYPES:
        raise ValueError(f"unknown head_type {head.head_type!r}")
    attrs = _kind_attrs(head.attrs, {"head_type": head.head_type,
                                     "temperature": require_positive(head.temperature, "temperature")})
    with atomic_h5(path, "head", parents, attrs) as f:
        f.create_dataset("weight", data=weight)
        f.create_dataset("bias", data=bias)
        write_strings(f, "classnames", head.classnames)
        _write_datasets(f, datasets)


def _write_datasets(f: h5py.File, datasets: dict[str, np.ndarray] | None) -> None:
    """Datasets a writer adds beside a kind's own (compressed: they may hold a value per row)."""
    for name, values in (datasets or {}).items():
        values = np.asarray(values)
        f.create_dataset(name, data=values, **({"compression": "gzip", "shuffle": True} if values.size > 1024 else {}))


def read_head(path: str | Path) -> Head:
    with open_h5(path) as f, read_errors(path):
        check_header(f, path, ("head",))
        weight = require_dataset(f, "weight", path, 2, "float")[()].astype(np.float32)
        bias = require_dataset(f, "bias", path, 1, "float")[()].astype(np.float32)
        classnames = read_classnames(f, path, weight.shape[0])
        attrs = get_attrs(f)
    if bias.shape != (weight.shape[0],):
        raise GlaInputError(f"bias has shape {bias.shape}, weight has {weight.shape[0]} classes", path)
    require_finite(weight, "weight", path)
    require_finite(bias, "bias", path)
    return Head(weight=weight, bias=bias, classnames=classnames, head_type=str(attrs.get("head_type", "")),
                temperature=read_temperature(attrs, "temperature", path), attrs=attrs)
