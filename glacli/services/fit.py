"""``fit``: a linear-probe head on cached features, with its penalty chosen on a validation set.

The fit is :func:`glacli.api.fit_probe` (the solver and the penalty search: :mod:`glacli.core.probe`;
the anchor of ``--anchor``: :mod:`glacli.core.anchor`); this module adds the files and the policies
around it: which heads may anchor which features, where the features live during the fit (held on
the compute device when they fit ``--memory`` and, on a GPU, half its free memory; else streamed
from disk on every pass), the progress count, what the head file records, and the warnings a user
should read before trusting the head.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glacli import api
from glacli.base.devices import resolve_device
from glacli.base.errors import GlaInputError
from glacli.base.types import Head, PathPoint, ProbeResult, Reporter
from glacli.core.anchor import AnchorFit
from glacli.core.calibration import T_MAX, T_MIN
from glacli.core.probe import WD_GRID, ProbeData, SolverOptions, chunk_rows_for, planned_fits, wd_to_c
from glacli.io import fitted_ids
from glacli.io.paramfile import read_head, write_head
from glacli.io.rowfile import RowFile, read_rows
from glacli.services.fit_defaults import DEFAULT_MEMORY_GIB
from glacli.base.validation import (
    check_head_fits,
    check_same_classnames,
    check_same_dimension,
    require_count,
    require_every_class,
    require_positive,
)

RECORDED_TRAIN_ATTRS = ("model", "pretrained")
"""Attributes of the training features that the head records."""
ANCHOR_MUST_MATCH = ("encoder", "model")
"""Attributes an anchor head and the training features must agree on, where both record them:
a head from another embedding space is no anchor for these features."""


def fit_head(train: Path, output: Path, *, val: Path | None = None, wd: float | None = None,
             init: Path | None = None, anchor: Path | None = None, balanced: bool = False,
             device: str = "auto", float64: bool = False,
             max_iter: int = 1000, tol: float = SolverOptions.tol, memory_gib: float = DEFAULT_MEMORY_GIB,
             reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Fit a head on ``train`` at penalty ``wd``, or at the one chosen on ``val``, and write it.

    With ``val`` the head's temperature is calibrated on it by NLL. ``init`` is a head to start
    from (a zero-shot head saves iterations). ``anchor`` is a zero-shot head: the penalty pulls the
    weights towards it (:mod:`glacli.core.anchor`; the head written is ``anchored``, started from the
    anchor unless ``init`` says otherwise). Returns the report of ``gla fit --json``, with the
    warnings (:func:`fit_warnings`) and the seconds spent loading and fitting.
    """
    if wd is None and val is None:
        raise GlaInputError("give --val to choose the penalty on a validation set, or --wd to fix it")
    require_count(max_iter, "--max-iter")
    require_positive(tol, "--tol")
    memory_bytes = require_positive(memory_gib, "--memory") * 2**30
    torch_device = resolve_device(device)
    options = SolverOptions(device=torch_device, dtype=torch.float64 if float64 else torch.float32,
                            max_iter=max_iter, tol=tol, search_tol=max(tol, SolverOptions.search_tol))
    load_start = time.perf_counter()
    with contextlib.ExitStack() as files:
        train_file = files.enter_context(read_rows(train, "features"))
        train_labels = train_file.require_labels("to fit a probe")
        require_every_class(train_labels, train_file.classnames, train_file.path, "a linear probe needs every class")
        parents = [train_file.gla_id]
        zero_shot = None
        if anchor is not None:
            zero_shot = read_head(anchor)
            check_anchor(zero_shot, anchor, train_file, reporter)
        val_rows, val_file = None, None
        if val is not None:
            val_file = files.enter_context(read_rows(val, "features"))
            check_same_classnames(val_file.classnames, val_file.path, train_file.classnames, train_file.path)
            check_same_dimension(val_file.n_cols, val_file.path, train_file.n_cols, train_file.path)
            val_labels = val_file.require_labels("to choose the penalty and the temperature")
            val_rows = (probe_data(val_file, options, memory_bytes), val_labels)
            parents.append(val_file.gla_id)
        init_head = None
        if init is not None:
            init_head = read_head(init)
            check_head_fits(init_head, init, train_file.classnames, train_file.n_cols, train_file.path)
            parents.append(init_head.gla_id)
        train_rows = probe_data(train_file, options, memory_bytes)
        fit_start = time.perf_counter()
        if zero_shot is not None:
            parents.append(zero_shot.gla_id)
        fitted = _run_fit(train_rows, train_labels, reporter, val=val_rows, anchor=zero_shot, init=init_head,
                          wd=wd, balanced=balanced, classnames=train_file.classnames, max_iter=max_iter, tol=tol,
                          device=str(torch_device), float64=float64)
        fit_seconds = time.perf_counter() - fit_start
        result, anchor_fit = fitted.result, fitted.anchor
        attrs = {**fitted.head.attrs, "c_equivalent": wd_to_c(result.wd, train_file.n_rows), "train": str(train),
                 **{k: train_file.attrs[k] for k in RECORDED_TRAIN_ATTRS if k in train_file.attrs}}
        if anchor_fit is not None:
            attrs.update(anchor_attrs(anchor_fit, zero_shot.gla_id, anchor))
        write_head(output, replace(fitted.head, attrs=attrs), parents,
                   datasets={fitted_ids.DATASET: fitted_ids.hash_rows(
                             [train_file] + ([val_file] if val_file is not None else []))})
        report = _report(result, train_file, output, balanced, torch_device)
    report["seconds"] = {"load": fit_start - load_start, "fit": fit_seconds}
    report["anchor"] = None if anchor_fit is None else anchor_attrs(anchor_fit, zero_shot.gla_id, anchor)
    report["warnings"] = fit_warnings(result, searched=wd is None, anchor=anchor_fit)
    return report


def check_anchor(head: Head, path: Path, train: RowFile, reporter: Reporter) -> None:
    """Refuse an anchor that is not a zero-shot head (the method anchors at the zero-shot model) or
    belongs to other features (classes, dimension, encoder, model); warn when only the recorded
    ``pretrained`` differs (a tag and a path may name the same weights)."""
    if head.head_type != "zeroshot":
        raise GlaInputError(f"is a {head.head_type!r} head; --anchor takes the zero-shot head of these features "
                            "(gla zeroshot --like TRAIN_FEATURES.h5)", path)
    check_head_fits(head, path, train.classnames, train.n_cols, train.path)
    for key in ANCHOR_MUST_MATCH:
        ours, theirs = head.attrs.get(key), train.attrs.get(key)
        if ours is not None and theirs is not None and ours != theirs:
            raise GlaInputError(f"was made with {key} {ours!r} but {train.path} was extracted with {theirs!r}", path)
    ours, theirs = head.attrs.get("pretrained"), train.attrs.get("pretrained")
    if ours is not None and theirs is not None and ours != theirs:
        reporter.warning(f"{path} was made with pretrained {ours!r}, {train.path} extracted with {theirs!r}")


def anchor_attrs(anchor: AnchorFit, anchor_id: str, path: Path) -> dict[str, Any]:
    """What an anchored head records of its anchor: which head, and the divisor that made ``W_a``."""
    return {"anchor_id": anchor_id, "anchor": str(path), "anchor_temperature": anchor.temperature,
            "anchor_t_zs": anchor.t_zs, "anchor_t_zs_fitted": anchor.fitted}


def fit_warnings(result: ProbeResult, searched: bool, anchor: AnchorFit | None = None) -> list[str]:
    """What a user should look at before trusting the head: no convergence, a penalty or temperature at a bound.

    The strongest penalty's head is close to the anchor: zero for the plain probe (so validating no
    better than it means the features carry little signal), the zero-shot model for the anchored
    one (so the shots did not improve on it)."""
    warnings = []
    if anchor is not None and not anchor.fitted:
        cause = ("classifies every training row correctly" if anchor.t_zs < 1
                 else "carries no signal for these labels")
        warnings.append(f"the anchor's temperature has no finite NLL optimum on the training rows (the zero-shot "
                        f"head {cause}); the anchor keeps the head's own scale (T_zs = 1)")
    if not result.converged:
        warnings.append(f"the final fit stopped after {result.iterations} iterations without converging; "
                        "raise --max-iter")
    strongest = max(result.path, key=lambda point: point.wd, default=None)
    if searched and strongest is not None and result.val_accuracy <= strongest.val_accuracy:
        if anchor is None:
            warnings.append(f"no penalty validated better than the strongest searched (wd {strongest.wd:g}), whose "
                            "head is close to zero: the features carry little signal for these labels; check them")
        else:
            warnings.append(f"no penalty validated better than the strongest searched (wd {strongest.wd:g}), whose "
                            "head is close to the anchor: on the validation rows the shots did not improve on the "
                            "zero-shot head")
    if searched and result.wd <= WD_GRID[-2]:
        warnings.append(f"the chosen penalty wd {result.wd:.3g} is at the weak end of the searched range "
                        f"({WD_GRID[0]:g} to {WD_GRID[-1]:g}): the validation optimum may lie beyond it; "
                        "try --wd with a smaller value")
    if result.val_accuracy is not None and not T_MIN * 1.0001 < result.temperature < T_MAX / 1.0001:
        warnings.append(f"the calibrated temperature {result.temperature:g} is at its bound: the validation "
                        "rows are classified with full confidence (separable) or the logits carry no signal")
    return warnings


def hold_on_device(n_bytes: float, memory_bytes: float, device: torch.device) -> bool:
    """Whether features of ``n_bytes`` are held on ``device`` rather than streamed from disk: they must fit
    ``--memory`` and, on a GPU, half of its free memory (the rest is for logits chunks and solver state)."""
    if n_bytes > memory_bytes:
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return n_bytes <= free / 2
    return True


def probe_data(rows: RowFile, options: SolverOptions, memory_bytes: float) -> ProbeData:
    """The rows in memory on the compute device when they fit (:func:`hold_on_device`), else streamed from disk."""
    labels = torch.from_numpy(rows.labels)
    itemsize = torch.finfo(options.dtype).bits // 8
    if hold_on_device(rows.n_rows * rows.n_cols * itemsize, memory_bytes, options.device):
        features = torch.empty(rows.n_rows, rows.n_cols, dtype=options.dtype, device=options.device)
        for chunk in rows.iter_chunks():
            features[chunk.start:chunk.stop] = torch.from_numpy(chunk.values).to(options.device, options.dtype)
        return ProbeData.from_tensors(features, labels, rows.n_classes)
    step = chunk_rows_for(rows.n_cols, rows.n_classes, options.device)  # large on a GPU; memory stays one chunk

    def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for chunk in rows.iter_chunks(step):
            yield torch.from_numpy(chunk.values), torch.from_numpy(chunk.labels)

    return ProbeData(chunks, labels, rows.n_cols, rows.n_classes)


@dataclass(frozen=True)
class _Fitted:
    """The head :func:`glacli.api.fit_probe` returned, and the solver's and the anchor's records it passed on."""

    head: Head
    result: ProbeResult
    anchor: AnchorFit | None


def _run_fit(features: ProbeData, labels: np.ndarray, reporter: Reporter, **options: Any) -> _Fitted:
    """:func:`glacli.api.fit_probe` with a progress count: one step per penalty of the search, or per
    L-BFGS evaluation at a fixed one (``options``: the API's)."""
    done = 0
    records: list[tuple[ProbeResult, AnchorFit | None]] = []

    def step(description: str | None = None) -> None:
        nonlocal done
        done += 1
        reporter.advance(1, description=description)

    if options["wd"] is None:
        total = planned_fits() + 1
        reporter.start("penalty search", total)
        best: list[PathPoint] = []

        def on_fit(point: PathPoint) -> None:
            if not best or point.key() > best[0].key():
                best[:] = [point]
            step(f"penalty search: wd {point.wd:.1e} (best {best[0].wd:.1e}, val {100 * best[0].val_accuracy:.2f}%)")

        head = api.fit_probe(features, labels, on_fit=on_fit, on_result=lambda *record: records.append(record),
                             **options)
    else:
        total = 2 * options["max_iter"]
        reporter.start(f"fitting at wd {options['wd']:.1e} (L-BFGS evaluations)", total)
        head = api.fit_probe(features, labels, on_evaluation=lambda loss: step(),
                             on_result=lambda *record: records.append(record), **options)
    reporter.advance(max(0, total - done))
    return _Fitted(head, *records[0])


def _report(result: ProbeResult, train_file: RowFile, output: Path, balanced: bool,
            device: torch.device) -> dict[str, Any]:
    return {
        "output": str(output), "wd": result.wd, "c_equivalent": wd_to_c(result.wd, train_file.n_rows),
        "temperature": result.temperature, "iterations": result.iterations, "final_loss": result.final_loss,
        "converged": result.converged, "balanced": balanced, "n_rows": train_file.n_rows,
        "n_features": train_file.n_cols, "n_classes": train_file.n_classes, "device": str(device),
        "val_accuracy": result.val_accuracy, "val_nll": result.val_nll,
        "val_nll_uncalibrated": result.val_nll_uncalibrated,
        "path": [{"wd": p.wd, "val_accuracy": p.val_accuracy, "val_nll": p.val_nll, "iterations": p.iterations,
                  "loss": p.loss, "stage": p.stage} for p in result.path],
    }
