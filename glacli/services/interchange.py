"""``import`` and ``export``: files of other tools into gla files, and gla files out again.

The readers and writers of each format live in :mod:`glacli.io.formats`; this module owns what
happens between: which labels, class names and ids a file gets when it has none (or takes from a
gla file of the same rows, so that two tools' outputs line up), probabilities stored as
log-probabilities, features L2-normalised, priors normalised, and the notes that say so. Rows
stream block by block on both sides.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.base.types import ExportReport, ImportReport, Prior
from glacli.io import formats
from glacli.io import store
from glacli.io.formats import npy
from glacli.io.formats.base import ReadOptions, RowSource
from glacli.io.formats.classnames import read_classnames
from glacli.base.validation import (
    PRIOR_SUM_TOLERANCE,
    check_classnames,
    require_choice,
    require_count,
    require_finite,
    require_label_range,
    require_numeric,
    require_positive,
    require_positive_entries,
)

IMPORT_KINDS = ("logits", "features", "prior")
TINY = float(np.finfo(np.float32).tiny)
"""Probabilities of exactly 0 are stored as log(TINY) so that the logits stay finite."""
PRIOR_STATUS_ATTRS = ("temperature", "method", "converged", "max_moment_gap", "iterations")
"""Attributes of an imported prior that the prior record sets itself."""


def default_classnames(n: int) -> list[str]:
    return [f"class_{k}" for k in range(n)]


def default_ids(start: int, stop: int) -> list[str]:
    return [f"row_{i:06d}" for i in range(start, stop)]


def import_file(path: str | Path, kind: str, output: str | Path, *, options: ReadOptions = ReadOptions(),
                classnames_file: str | Path | None = None, labels_file: str | Path | None = None,
                probabilities: bool = False, temperature: float | None = None,
                ids_from: str | Path | None = None, ids_range: int | None = None) -> ImportReport:
    """Import logits, features or a prior written by another tool as a gla file at ``output``.

    Logits are stored as float32 (``probabilities``: their log, zeros as log(TINY)); features are
    L2-normalised and stored as float32 (float16 input stays float16); a prior is normalised to
    sum to 1. The ids are the file's, or those of the gla file ``ids_from`` (the same rows in the
    same order, from another tool: labels must agree where both have one), or ``ids_range``,
    ``ids_range + 1``, ... as text. Options that do not apply are refused before anything is read.
    """
    require_choice(kind, IMPORT_KINDS, "--kind")
    id_options = {"--id-column": options.id_column, "--ids-key": options.ids_key, "--ids-from": ids_from,
                  "--ids-range": ids_range}
    row_options = {"--labels": labels_file, "--labels-key": options.labels_key,
                   "--label-column": options.label_column, **id_options, "--probabilities": probabilities or None}
    if kind == "prior":
        for option, value in row_options.items():
            if value is not None:
                raise GlaInputError(f"{option} does not apply to a prior")
        return _import_prior(Path(path), output, options.key, classnames_file, temperature)
    if temperature is not None:
        raise GlaInputError("--temperature applies to priors only")
    if probabilities and kind != "logits":
        raise GlaInputError(f"--probabilities applies to logits, not {kind}")
    given = [option for option, value in id_options.items() if value is not None]
    if len(given) > 1:
        raise GlaInputError(f"{' and '.join(given)} both say where the ids come from; give one")
    if ids_range is not None:
        require_count(ids_range, "--ids-range", minimum=0)
    with contextlib.nullcontext() if ids_from is None else store.RowFile(ids_from) as like:
        return _import_rows(Path(path), kind, output, options, classnames_file, labels_file, probabilities,
                            _RowIds(like, ids_range))


@dataclass
class _RowIds:
    """Where the ids of imported rows come from when not from the file: a gla file of the same rows
    (``like``), or a range of integers from ``start``."""

    like: store.RowFile | None = None
    start: int | None = None

    def describe(self, src: RowSource) -> str:
        if self.like is not None:
            return self.like.path
        return src.ids_from if self.start is None else f"the range {self.start}, {self.start + 1}, ..."

    def block(self, start: int, stop: int, from_file: list[str] | None) -> list[str]:
        """The ids of rows ``start:stop``."""
        if self.like is not None:
            return self.like.ids(start, stop)
        if self.start is not None:
            return [str(self.start + i) for i in range(start, stop)]
        return from_file or default_ids(start, stop)

    def check(self, src: RowSource, labels: np.ndarray, labels_from: str | Path, report: ImportReport) -> None:
        """With ``like``: the same number of rows, and labels that agree where both files have one."""
        if self.like is None:
            return
        if src.n_rows != self.like.n_rows:
            raise GlaInputError(f"has {src.n_rows} rows but {self.like.path} (--ids-from) has {self.like.n_rows}; "
                                "its ids fit only the same rows in the same order", src.path)
        store.check_same_labels(labels, labels_from, self.like.labels, self.like.path)
        both = int(((labels >= 0) & (self.like.labels >= 0)).sum())
        report.notes.append(f"took the ids of {self.like.path}: labels agree on all {both} rows labelled in both"
                            if both else f"took the ids of {self.like.path}: no row is labelled in both files, so "
                                         "nothing checks that they hold the same rows in the same order")


def _import_rows(path: Path, kind: str, output: str | Path, options: ReadOptions, classnames_file: str | Path | None,
                 labels_file: str | Path | None, probabilities: bool, row_ids: _RowIds) -> ImportReport:
    names_given = read_classnames(classnames_file) if classnames_file else None
    src = formats.read_rows(path, kind, dataclasses.replace(options, classnames=names_given))
    report = ImportReport(str(path), str(output), kind, n_rows=src.n_rows, n_cols=src.n_cols,
                          labels_from=src.labels_from, ids_from=row_ids.describe(src))
    labels = src.labels
    if labels_file is not None:
        labels = npy.read_labels(Path(labels_file), src.n_rows)
        report.labels_from = str(labels_file)
    if labels is None:
        labels = np.full(src.n_rows, -1, dtype=np.int64)
    row_ids.check(src, labels, labels_file or path, report)
    names = _row_classnames(src, kind, labels, names_given, classnames_file, row_ids.like, report)
    require_label_range(labels, len(names), labels_file or path)
    report.n_classes, report.labelled_rows = len(names), int((labels >= 0).sum())

    stored = np.float16 if kind == "features" and src.dtype == np.float16 else np.float32
    attrs: dict[str, Any] = {"source": path.name, "imported_from": path.suffix.lstrip(".")}
    if kind == "logits":
        attrs["temperature"] = 1.0
        if probabilities:
            attrs["from_probabilities"] = True
    zeros, flagged_probabilities = 0, False
    parents = [row_ids.like.gla_id] if row_ids.like is not None else []
    with store.write_rows(output, kind, n_rows=src.n_rows, n_cols=src.n_cols, classnames=names,
                          attrs=attrs, parents=parents, dtype=stored) as sink:
        for start, values, ids in src.chunks(chunking.io_rows(src.n_cols, 8)):
            require_finite(values, kind, path, start)
            if kind == "logits" and probabilities:
                values, n_zero = _log_probabilities(values, path, start)
                zeros += n_zero
            elif kind == "logits" and not flagged_probabilities and _looks_like_probabilities(values):
                flagged_probabilities = True
            if kind == "features":
                values = _l2_normalise(values, path, start)
            stop = start + len(values)
            sink.write(start, values.astype(stored), labels[start:stop], row_ids.block(start, stop, ids))
    if kind == "features":
        report.notes.append("rows were L2-normalised (the features format requires unit-length rows)")
    if probabilities:
        report.notes.append("stored the log of the probabilities as logits")
    if zeros:
        report.notes.append(f"{zeros} probabilities of exactly 0 were stored as log({TINY:.3g})")
    if flagged_probabilities:
        report.notes.append("the values look like probabilities (in [0, 1], rows sum to 1); "
                            "re-import with --probabilities to store their log")
    return report


def _row_classnames(src: RowSource, kind: str, labels: np.ndarray, names_given: list[str] | None,
                    classnames_file: str | Path | None, like: store.RowFile | None, report: ImportReport) -> list[str]:
    """The given names, else the file's, else those of the ``--ids-from`` file (the same rows, so the same
    classes), else generated ones (one per logits column, or per label)."""
    if names_given is not None:
        names, report.classnames_from = names_given, str(classnames_file)
    elif src.classnames is not None:
        names, report.classnames_from = src.classnames, src.classnames_from
    elif like is not None:
        names, report.classnames_from = like.classnames, like.path
    elif kind == "logits":
        names, report.classnames_from = default_classnames(src.n_cols), "generated"
    else:
        if not (labels >= 0).any():
            raise GlaInputError("features without labels need --classnames FILE (the number of classes "
                                "cannot be inferred)", src.path)
        names, report.classnames_from = default_classnames(int(labels.max()) + 1), "generated from the labels"
    if kind == "logits" and len(names) != src.n_cols:
        raise GlaInputError(f"has {src.n_cols} class columns but {len(names)} class names "
                            f"({report.classnames_from})", src.path)
    return names


def _log_probabilities(probs: np.ndarray, path: Path, row_offset: int) -> tuple[np.ndarray, int]:
    """``log p`` for probabilities in [0, 1]; zeros become ``log(TINY)``. Returns (logits, zeros)."""
    outside = (probs < 0) | (probs > 1)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise GlaInputError(f"--probabilities: value {probs[row, col]:g} at row {row_offset + int(row)} is "
                            "outside [0, 1]", path)
    zeros = int((probs == 0).sum())
    return np.log(np.maximum(probs, TINY)), zeros


def _l2_normalise(values: np.ndarray, path: Path, row_offset: int) -> np.ndarray:
    """Rows scaled to unit length (the features format requires it); an all-zero row is an error."""
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    if (norms == 0).any():
        raise GlaInputError(f"feature row {row_offset + int(np.argmax(norms[:, 0] == 0))} is all zeros "
                            "and cannot be L2-normalised", path)
    return values / norms


def _looks_like_probabilities(values: np.ndarray) -> bool:
    return bool(values.size) and bool(((values >= 0) & (values <= 1)).all()) and bool(
        np.allclose(values.sum(1), 1.0, atol=1e-3))


def _import_prior(path: Path, output: str | Path, key: str | None, classnames_file: str | Path | None,
                  temperature: float | None) -> ImportReport:
    names, values, attrs = formats.read_prior(path, key)
    values = require_numeric(values, "the prior", path).astype(np.float64)
    if values.ndim != 1:
        raise GlaInputError(f"the prior has shape {values.shape}, expected a vector (one entry per class)", path)
    if values.size == 0:
        raise GlaInputError("the prior is empty", path)
    require_finite(values, "prior", path)
    require_positive_entries(values, "prior", path)
    report = ImportReport(str(path), str(output), "prior", n_cols=len(values), n_classes=len(values),
                          classnames_from="the file" if names else "generated")
    if classnames_file is not None:
        names, report.classnames_from = read_classnames(classnames_file), str(classnames_file)
    names = check_classnames(names, path) if names else default_classnames(len(values))
    if len(names) != len(values):
        raise GlaInputError(f"has {len(values)} prior entries but {len(names)} class names "
                            f"({report.classnames_from})", path)
    total = float(values.sum())
    if abs(total - 1.0) > PRIOR_SUM_TOLERANCE:
        report.notes.append(f"normalised the prior to sum to 1 (it summed to {total:.6g})")
    if temperature is None:
        temperature = require_positive(attrs.get("temperature", 1.0), "temperature", path)
    kept = {k: v for k, v in attrs.items() if k not in store.PROVENANCE_ATTRS and k not in PRIOR_STATUS_ATTRS}
    store.write_prior(output, Prior(
        prior=values / total, classnames=names, temperature=temperature,
        method=str(attrs.get("method", "imported")), converged=bool(attrs.get("converged", True)),
        max_moment_gap=float(attrs.get("max_moment_gap", 0.0)), iterations=int(attrs.get("iterations", 0)),
        attrs={**kept, "source": path.name, "imported_from": path.suffix.lower().lstrip("."), "imported_sum": total}))
    return report


def export_file(path: str | Path, output: str | Path) -> ExportReport:
    """Write the gla file at ``path`` to ``output``, in the format its extension names."""
    path, output = Path(path), Path(output)
    kind = store.file_kind(path)
    suffix = output.suffix.lower()
    writers = formats.WRITERS[kind]
    if suffix not in writers:
        raise GlaInputError(f"cannot export a {kind} file as {suffix or '(no extension)'!r}; "
                            f"choose {', '.join(writers)}", output)
    if output.resolve() == path.resolve():
        raise GlaInputError("the output would overwrite the input", output)
    if kind == "prior":
        prior = store.read_prior(path)
        return ExportReport(str(path), str(output), kind, prior.prior.shape, writers[suffix](prior, output))
    if kind == "head":
        head = store.read_head(path)
        return ExportReport(str(path), str(output), kind, head.weight.shape, writers[suffix](head, output))
    with store.RowFile(path, (kind,)) as src:
        return ExportReport(str(path), str(output), kind, (src.n_rows, src.n_cols), writers[suffix](src, output))
