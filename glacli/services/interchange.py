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
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.base.types import HEAD_TYPES, ExportReport, Head, ImportReport, Prior, Reporter
from glacli.io import formats
from glacli.io.crossfile import check_same_labels
from glacli.io.formats import npy
from glacli.io.formats.base import ReadOptions, RowSource, positional_classnames
from glacli.io.formats.classnames import read_classnames
from glacli.base.validation import (
    PRIOR_SUM_TOLERANCE,
    check_classnames,
    renamed_classnames_note,
    require_choice,
    require_count,
    require_finite,
    require_label_range,
    require_numeric,
    require_positive,
    require_positive_entries,
)
from glacli.io.h5file import PROVENANCE_ATTRS, file_kind
from glacli.io.outputs import check_output_path
from glacli.io.paramfile import read_head, read_prior, write_head, write_prior
from glacli.io.rowfile import RowFile, write_rows

IMPORT_KINDS = ("logits", "features", "prior", "head")
TINY = float(np.finfo(np.float32).tiny)
"""Probabilities of exactly 0 are stored as log(TINY) so that the logits stay finite."""
PRIOR_STATUS_ATTRS = ("temperature", "method", "converged", "max_moment_gap", "iterations")
"""Attributes of an imported prior that the prior record sets itself."""
PROBABILITY_SUM_TOLERANCE = 1e-3
"""Rows that are non-negative and sum to 1 within this look like probabilities, not logits."""
UNIT_NORM_TOLERANCE = 1e-3
"""Feature rows whose length is within this of 1 count as already L2-normalised (float16 rounding)."""
PROGRESS_DELAY = 1.0
"""Seconds an import runs before its progress bar appears (short imports show none)."""


def default_classnames(n: int) -> list[str]:
    return [f"class_{k}" for k in range(n)]


def default_ids(start: int, stop: int) -> list[str]:
    return [f"row_{i:06d}" for i in range(start, stop)]


@dataclass(frozen=True)
class HeadOptions:
    """How an imported head is scaled and what it is (``gla import --kind head``)."""

    normalize_rows: bool = False
    """Scale each weight row to unit length first (text classifiers stored unnormalised)."""
    logit_scale: float | None = None
    """Multiply weight and bias by this (CLIP's 100 for a zero-shot text classifier)."""
    input_normalize: bool = False
    """The head L2-normalises its input (WiSE-FT's ``ClassificationHead(normalize=True)``)."""
    head_type: str | None = None
    """Default: ``finetuned`` for a checkpoint's ``<key>.weight``, ``zeroshot`` for an array."""

    def given(self) -> list[str]:
        return [option for option, value in (("--normalize-rows", self.normalize_rows or None),
                                             ("--logit-scale", self.logit_scale),
                                             ("--input-normalize", self.input_normalize or None),
                                             ("--head-type", self.head_type)) if value is not None]


def import_file(path: str | Path, kind: str, output: str | Path, *, options: ReadOptions = ReadOptions(),
                classnames_file: str | Path | None = None, labels_file: str | Path | None = None,
                probabilities: bool = False, logits_anyway: bool = False, temperature: float | None = None,
                ids_from: str | Path | None = None, ids_range: int | None = None,
                head: HeadOptions = HeadOptions(), reporter: Reporter = Reporter()) -> ImportReport:
    """Import logits, features, a prior or a head written by another tool as a gla file at ``output``.

    Logits are stored as float32 (``probabilities``: their log, zeros as log(TINY)); values that look
    like probabilities are refused unless ``probabilities`` or ``logits_anyway``. Features are
    L2-normalised and stored as float32. A prior is normalised to sum to 1. A head is a checkpoint's
    ``<key>.weight`` / ``<key>.bias`` or an array (see :mod:`glacli.io.formats.head`). The ids are the
    file's, or those of the gla file ``ids_from`` (the same rows in the same order, from another tool:
    labels must agree where both have one), or ``ids_range``, ``ids_range + 1``, ... as text. Options
    that do not apply are refused before anything is read.
    """
    require_choice(kind, IMPORT_KINDS, "--kind")
    id_options = {"--id-column": options.id_column, "--ids-key": options.ids_key, "--ids-from": ids_from,
                  "--ids-range": ids_range}
    row_options = {"--labels": labels_file, "--labels-key": options.labels_key,
                   "--label-column": options.label_column, **id_options, "--probabilities": probabilities or None,
                   "--logits-anyway": logits_anyway or None}
    if kind != "head" and head.given():
        raise GlaInputError(f"{head.given()[0]} applies to --kind head only")
    if kind in ("prior", "head"):
        for option, value in {**row_options, **({"--temperature": temperature} if kind == "head" else {}),
                              **({"--classnames-key": options.classnames_key} if kind == "prior" else {})}.items():
            if value is not None:
                raise GlaInputError(f"{option} does not apply to a {kind}")
        check_output_path(output)
        if kind == "head":
            return _import_head(Path(path), output, options, classnames_file, head)
        return _import_prior(Path(path), output, options.key, classnames_file, temperature)
    if temperature is not None:
        raise GlaInputError("--temperature applies to priors only")
    for option, value in (("--probabilities", probabilities), ("--logits-anyway", logits_anyway)):
        if value and kind != "logits":
            raise GlaInputError(f"{option} applies to logits, not {kind}")
    if probabilities and logits_anyway:
        raise GlaInputError("--probabilities and --logits-anyway contradict each other; give one")
    given = [option for option, value in id_options.items() if value is not None]
    if len(given) > 1:
        raise GlaInputError(f"{' and '.join(given)} both say where the ids come from; give one")
    if ids_range is not None:
        require_count(ids_range, "--ids-range", minimum=0)
    check_output_path(output)
    with contextlib.nullcontext() if ids_from is None else RowFile(ids_from) as like:
        return _import_rows(Path(path), kind, output, options, classnames_file, labels_file,
                            _ValueRule(probabilities, logits_anyway), _RowIds(like, ids_range), reporter)


@dataclass
class _ValueRule:
    """How logits values are taken: as logits, as probabilities (stored as their log), or as logits
    although every row looks like probabilities (``logits_anyway``)."""

    probabilities: bool = False
    logits_anyway: bool = False
    all_rows_look_like_probabilities: bool = True


@dataclass
class _RowIds:
    """Where the ids of imported rows come from when not from the file: a gla file of the same rows
    (``like``), or a range of integers from ``start``."""

    like: RowFile | None = None
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
        check_same_labels(labels, labels_from, self.like.labels, self.like.path)
        both = int(((labels >= 0) & (self.like.labels >= 0)).sum())
        report.notes.append(f"took the ids of {self.like.path}: labels agree on all {both} rows labelled in both"
                            if both else f"took the ids of {self.like.path}: no row is labelled in both files, so "
                                         "nothing checks that they hold the same rows in the same order")


def _import_rows(path: Path, kind: str, output: str | Path, options: ReadOptions, classnames_file: str | Path | None,
                 labels_file: str | Path | None, rule: _ValueRule, row_ids: _RowIds,
                 reporter: Reporter) -> ImportReport:
    clock = _DelayedProgress(reporter)
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
    names, order = _row_classnames(src, kind, labels, names_given, classnames_file, row_ids.like, report)
    if order is not None:
        labels = np.where(labels >= 0, np.argsort(order)[np.clip(labels, 0, len(order) - 1)], labels)
    row_ids.check(src, labels, labels_file or path, report)
    require_label_range(labels, len(names), labels_file or path)
    report.n_classes, report.labelled_rows = len(names), int((labels >= 0).sum())
    if note := renamed_classnames_note(names):
        report.notes.append(note)

    stored = np.float32
    attrs: dict[str, Any] = {"source": path.name, "imported_from": path.suffix.lstrip(".")}
    if kind == "logits":
        attrs["temperature"] = 1.0
        if rule.probabilities:
            attrs["from_probabilities"] = True
    zeros, norm_gap = 0, 0.0
    parents = [row_ids.like.gla_id] if row_ids.like is not None else []
    clock.begin(f"import {path.name}", src.n_rows)
    with write_rows(output, kind, n_rows=src.n_rows, n_cols=src.n_cols, classnames=names,
                    attrs=attrs, parents=parents, dtype=stored) as sink:
        for start, values, ids in src.chunks(chunking.io_rows(src.n_cols, 8)):
            require_finite(values, kind, path, start)
            if order is not None:
                values = values[:, order]
            if kind == "logits" and rule.probabilities:
                values, n_zero = _log_probabilities(values, path, start)
                zeros += n_zero
            elif kind == "logits" and rule.all_rows_look_like_probabilities:
                rule.all_rows_look_like_probabilities = _looks_like_probabilities(values)
            if kind == "features":
                values, gap = _l2_normalise(values, path, start)
                norm_gap = max(norm_gap, gap)
            stop = start + len(values)
            sink.write(start, values.astype(stored), labels[start:stop], row_ids.block(start, stop, ids))
            clock.advance(len(values))
        taken_as_logits = kind == "logits" and not (rule.probabilities or rule.logits_anyway)
        if taken_as_logits and rule.all_rows_look_like_probabilities:
            raise GlaInputError(f"every row is non-negative and sums to 1 (within {PROBABILITY_SUM_TOLERANCE:g}): "
                                "these are probabilities, not logits; give --probabilities to store their log, "
                                "or --logits-anyway to take them as logits", path)
    if kind == "features":
        report.notes.append(f"rows were already unit length (largest | |x| - 1 | {norm_gap:.2g}); stored "
                            "L2-normalised as float32" if norm_gap <= UNIT_NORM_TOLERANCE else
                            f"rows were L2-normalised (the features format requires unit-length rows; the "
                            f"largest | |x| - 1 | was {norm_gap:.3g}); stored as float32")
    if rule.probabilities:
        report.notes.append("stored the log of the probabilities as logits")
    if zeros:
        report.notes.append(f"{zeros} probabilities of exactly 0 were stored as log({TINY:.3g})")
    if rule.logits_anyway and rule.all_rows_look_like_probabilities:
        report.notes.append("every row looks like probabilities; taken as logits as --logits-anyway asks")
    return report


class _DelayedProgress:
    """A progress count for the rows of an import, shown only once the import has run
    :data:`PROGRESS_DELAY` seconds, so that short imports print no bar."""

    def __init__(self, reporter: Reporter):
        self.reporter, self.began = reporter, time.monotonic()
        self.description, self.total, self.done, self.shown = "", 0, 0, False

    def begin(self, description: str, total: int) -> None:
        self.description, self.total = description, total

    def advance(self, n: int) -> None:
        self.done += n
        if self.shown:
            self.reporter.advance(n)
        elif time.monotonic() - self.began >= PROGRESS_DELAY:
            self.reporter.start(self.description, self.total, "rows")
            self.reporter.advance(self.done)
            self.shown = True


def _row_classnames(src: RowSource, kind: str, labels: np.ndarray, names_given: list[str] | None,
                    classnames_file: str | Path | None, like: RowFile | None, report: ImportReport
                    ) -> tuple[list[str], np.ndarray | None]:
    """The class names, and the order to take the file's columns in (None: as they are).

    The given names, else the file's, else those of the ``--ids-from`` file (the same rows, so the same
    classes), else generated ones (one per logits column, or per label). Logits columns that the file
    names (a CSV header, an archive's class names) are matched to ``--classnames`` by name and reordered
    to its order, never renamed; names that only number the columns (``class_0``, ``0``) take the given
    names by position."""
    order = None
    if names_given is not None:
        names, report.classnames_from = names_given, str(classnames_file)
        if kind == "logits" and src.classnames is not None and not positional_classnames(src.classnames):
            order = _column_order(src, names_given, classnames_file)
            if order is not None:
                report.notes.append(f"reordered the {len(order)} class columns by name to the order of "
                                    f"{classnames_file} (labels follow their classes)")
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
    return names, order


def _column_order(src: RowSource, names: list[str], classnames_file: str | Path | None) -> np.ndarray | None:
    """For each class of ``names``, the file's column of that name (None when already in order); the
    first name that the other side lacks is refused."""
    assert src.classnames is not None
    column = {name: k for k, name in enumerate(src.classnames)}
    for k, name in enumerate(names):
        if name not in column:
            raise GlaInputError(f"{classnames_file} (--classnames) names class {k} {name!r}, but no class column "
                                f"of the file ({src.classnames_from}) is named so; a named header is matched by "
                                "name, never renamed", src.path)
    extra = next((name for name in src.classnames if name not in set(names)), None)
    if extra is not None:
        hint = f"; if it holds the labels, give --label-column {extra}" if src.labels is None else ""
        raise GlaInputError(f"class column {extra!r} ({src.classnames_from}) is not among the class names of "
                            f"{classnames_file} (--classnames); a named header is matched by name, never renamed"
                            f"{hint}", src.path)
    order = np.array([column[name] for name in names])
    return None if (order == np.arange(len(order))).all() else order


def _log_probabilities(probs: np.ndarray, path: Path, row_offset: int) -> tuple[np.ndarray, int]:
    """``log p`` for probabilities in [0, 1]; zeros become ``log(TINY)``. Returns (logits, zeros)."""
    outside = (probs < 0) | (probs > 1)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise GlaInputError(f"--probabilities: value {probs[row, col]:g} at row {row_offset + int(row)} is "
                            "outside [0, 1]", path)
    zeros = int((probs == 0).sum())
    return np.log(np.maximum(probs, TINY)), zeros


def _l2_normalise(values: np.ndarray, path: Path, row_offset: int) -> tuple[np.ndarray, float]:
    """Rows scaled to unit length (the features format requires it), and the largest ``| |x| - 1 |``
    before; an all-zero row is an error."""
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    if (norms == 0).any():
        raise GlaInputError(f"feature row {row_offset + int(np.argmax(norms[:, 0] == 0))} is all zeros "
                            "and cannot be L2-normalised", path)
    return values / norms, float(np.abs(norms - 1).max(initial=0.0))


def _looks_like_probabilities(values: np.ndarray) -> bool:
    """Every row non-negative and summing to 1 within :data:`PROBABILITY_SUM_TOLERANCE`."""
    return bool((values >= 0).all()) and bool((np.abs(values.sum(1) - 1.0) <= PROBABILITY_SUM_TOLERANCE).all())


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
    if note := renamed_classnames_note(names):
        report.notes.append(note)
    if len(names) != len(values):
        raise GlaInputError(f"has {len(values)} prior entries but {len(names)} class names "
                            f"({report.classnames_from})", path)
    total = float(values.sum())
    if abs(total - 1.0) > PRIOR_SUM_TOLERANCE:
        report.notes.append(f"normalised the prior to sum to 1 (it summed to {total:.6g})")
    if temperature is None:
        temperature = require_positive(attrs.get("temperature", 1.0), "temperature", path)
    kept = {k: v for k, v in attrs.items() if k not in PROVENANCE_ATTRS and k not in PRIOR_STATUS_ATTRS}
    write_prior(output, Prior(
        prior=values / total, classnames=names, temperature=temperature,
        method=str(attrs.get("method", "imported")), converged=bool(attrs.get("converged", True)),
        max_moment_gap=float(attrs.get("max_moment_gap", 0.0)), iterations=int(attrs.get("iterations", 0)),
        attrs={**kept, "source": path.name, "imported_from": path.suffix.lower().lstrip("."), "imported_sum": total}))
    return report


def _import_head(path: Path, output: str | Path, options: ReadOptions, classnames_file: str | Path | None,
                 opts: HeadOptions) -> ImportReport:
    """A head file from a checkpoint's ``<key>.weight`` / ``<key>.bias`` or from an array: rows scaled to
    unit length (``normalize_rows``), then weight and bias times ``logit_scale``."""
    if opts.head_type is not None:
        require_choice(opts.head_type, HEAD_TYPES, "--head-type")
    scale = None if opts.logit_scale is None else require_positive(opts.logit_scale, "--logit-scale")
    names_given = read_classnames(classnames_file) if classnames_file else None
    found = formats.read_head(path, options.key, options.classnames_key)
    weight = found.weight.astype(np.float64)
    bias = np.zeros(len(weight)) if found.bias is None else found.bias.astype(np.float64)
    require_finite(weight, "head weight", path)
    require_finite(bias, "head bias", path)
    report = ImportReport(str(path), str(output), "head", n_rows=weight.shape[0], n_cols=weight.shape[1],
                          n_classes=weight.shape[0], labels_from="none", ids_from="none")
    if names_given is not None:
        names, report.classnames_from = names_given, str(classnames_file)
    elif found.classnames is not None:
        names, report.classnames_from = check_classnames(found.classnames, path), "the file"
    else:
        names, report.classnames_from = default_classnames(len(weight)), "generated"
    if len(names) != len(weight):
        raise GlaInputError(f"the head has {len(weight)} classes but {len(names)} class names "
                            f"({report.classnames_from})", path)
    if note := renamed_classnames_note(names):
        report.notes.append(note)
    entries = f"{found.weight_entry!r}" + (f" and {found.bias_entry!r}" if found.bias_entry else "")
    report.notes.append(f"took the head from {'the array' if not found.weight_entry else entries} "
                        f"({found.layout}){'' if found.bias is not None else '; no bias entry, so the bias is 0'}")
    if opts.normalize_rows:
        norms = np.linalg.norm(weight, axis=1, keepdims=True)
        if (norms == 0).any():
            raise GlaInputError(f"head row {int(np.argmax(norms[:, 0] == 0))} is all zeros and cannot be "
                                "normalised (--normalize-rows)", path)
        weight = weight / norms
    if scale is not None:
        weight, bias = weight * scale, bias * scale
    recorded = found.attrs
    head_type = opts.head_type or (str(recorded["head_type"]) if str(recorded.get("head_type")) in HEAD_TYPES
                                   else "finetuned" if found.layout == "state dict" else "zeroshot")
    temperature = require_positive(recorded.get("temperature", 1.0), "temperature", path)
    if opts.input_normalize:
        report.notes.append("the head normalises its input (--input-normalize, as WiSE-FT's ClassificationHead("
                            "normalize=True)); gla's features are L2-normalised already, so its logits are the "
                            "model's own")
    elif found.layout == "state dict":
        report.notes.append("gla applies heads to L2-normalised features: the logits are the model's own if the head "
                            "normalised its input (then say --input-normalize) or was fitted on normalised features; "
                            "a head fitted on unnormalised features gives other logits")
    attrs: dict[str, Any] = {"source": path.name, "imported_from": path.suffix.lower().lstrip("."),
                             "weight_entry": found.weight_entry, "input_normalize": bool(opts.input_normalize),
                             "normalize_rows": bool(opts.normalize_rows)}
    if scale is not None:
        attrs["logit_scale"] = scale
    write_head(output, Head(weight=weight.astype(np.float32), bias=bias.astype(np.float32), classnames=names,
                            head_type=head_type, temperature=temperature, attrs=attrs))
    report.head_type = head_type
    return report


EXPORT_FORMATS = ("npy", "npz", "csv", "json", "pt")
"""What ``--format`` names: the extension of the file written."""


def export_file(path: str | Path, output: str | Path, fmt: str | None = None,
                stream: BinaryIO | None = None) -> ExportReport:
    """Write the gla file at ``path`` to ``output``, in the format ``fmt`` (default: the extension of
    ``output``); ``output`` ``-`` writes to ``stream`` (standard output), and needs ``fmt``."""
    path = Path(path)
    if fmt is not None:
        require_choice(fmt, EXPORT_FORMATS, "--format")
    to_stream = str(output) == "-"
    if to_stream and fmt is None:
        raise GlaInputError("-o - writes to standard output: choose the format with --format "
                            f"({'|'.join(EXPORT_FORMATS)})")
    output = Path(output)
    if not to_stream and fmt is not None and output.suffix.lower() != f".{fmt}":
        raise GlaInputError(f"--format {fmt} does not match the extension of the output", output)
    kind = file_kind(path)
    suffix = f".{fmt}" if fmt is not None else output.suffix.lower()
    writers = formats.WRITERS[kind]
    if suffix not in writers:
        raise GlaInputError(f"cannot export a {kind} file as {suffix or '(no extension)'!r}; "
                            f"choose {', '.join(writers)}", "-" if to_stream else output)
    if not to_stream and output.resolve() == path.resolve():
        raise GlaInputError("the output would overwrite the input", output)
    if to_stream:
        with tempfile.TemporaryDirectory(prefix="gla-export-") as folder:
            staged = Path(folder) / f"export{suffix}"
            report = _export(path, kind, writers[suffix], staged)
            with open(staged, "rb") as fh:
                shutil.copyfileobj(fh, stream)
            stream.flush()
        report.output = "-"
        return report
    return _export(path, kind, writers[suffix], output)


def _export(path: Path, kind: str, writer: Any, output: Path) -> ExportReport:
    if kind == "prior":
        prior = read_prior(path)
        return ExportReport(str(path), str(output), kind, prior.prior.shape, writer(prior, output))
    if kind == "head":
        head = read_head(path)
        return ExportReport(str(path), str(output), kind, head.weight.shape, writer(head, output))
    with RowFile(path, (kind,)) as src:
        return ExportReport(str(path), str(output), kind, (src.n_rows, src.n_cols), writer(src, output))
