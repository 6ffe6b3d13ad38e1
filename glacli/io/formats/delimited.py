"""CSV and TSV files: a header naming the columns, then one row per sample (or per class, for a prior).

Read in blocks of records (at most :func:`glacli.base.chunking.text_rows` of the header's width), in
two passes: the first counts the rows and reads the label column, the second parses the value
columns with NumPy's C reader. Written row by row from a gla file's blocks.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.base.types import Prior
from glacli.base.validation import check_classnames
from glacli.io.formats.base import Chunks, ReadOptions, RowSource, positional_classnames
from glacli.io.outputs import atomic_output
from glacli.io.rowfile import RowFile

LABEL_COLUMNS = ("label", "labels", "target", "target-0", "targets", "ground_truth", "y")
ID_COLUMNS = ("id", "ids", "instance_id", "sample_id", "image_id", "path", "filename")
"""Column names tried, in order, for labels (``--label-column``) and sample ids (``--id-column``)."""
PRIOR_CLASS_COLUMNS = ("class", "classname", "name")
PRIOR_VALUE_COLUMNS = ("prior", "q", "p")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _cells(block: list[list[str]], column: int) -> np.ndarray:
    return np.array([row[column] for row in block], dtype=str)


class CsvTable:
    """A CSV/TSV file with a header, read in blocks of records."""

    def __init__(self, path: Path, label_column: str | None, id_column: str | None):
        self.path = path
        self.delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        header = self._header()
        self.width = len(header)
        lowered = [h.lower() for h in header]
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            raise GlaInputError(f"column {dup!r} appears twice in the header", path)
        if all(_is_number(h) for h in header):
            raise GlaInputError("the first line must be a header naming the columns (it holds numbers)", path)
        self.label_col = self._column(header, lowered, label_column, LABEL_COLUMNS, "--label-column")
        self.id_col = self._column(header, lowered, id_column, ID_COLUMNS, "--id-column")
        self.value_cols = [k for k in range(self.width) if k not in (self.label_col, self.id_col)]
        if not self.value_cols:
            raise GlaInputError("has no value columns besides the label and id columns", path)
        self.header = header
        self.label_names: Sequence[str] | None = None
        """Set for logits without a label column: the class names, so that a column holding only class
        indices or class names is taken for an unnamed label column (and refused with a hint)."""

    def _open(self) -> io.TextIOWrapper:
        return open(self.path, newline="", encoding="utf-8-sig")

    def _header(self) -> list[str]:
        try:
            with self._open() as fh:
                for row in csv.reader(fh, delimiter=self.delimiter):
                    if row:
                        return [h.strip() for h in row]
        except UnicodeDecodeError as exc:
            raise GlaInputError(f"is not UTF-8 text: {exc}", self.path) from exc
        except csv.Error as exc:
            raise GlaInputError(f"cannot be parsed as CSV: {exc}", self.path) from exc
        raise GlaInputError("is empty", self.path)

    def _column(self, header: list[str], lowered: list[str], chosen: str | None, defaults: Sequence[str],
                option: str) -> int | None:
        if chosen is not None:
            if chosen not in header:
                raise GlaInputError(f"has no column {chosen!r} ({option}); columns: {', '.join(header[:12])}"
                                    f"{' ...' if len(header) > 12 else ''}", self.path)
            return header.index(chosen)
        for name in defaults:
            if name in lowered:
                return lowered.index(name)
        return None

    def blocks(self) -> Iterator[tuple[int, list[list[str]]]]:
        """(first data row, block of records) after the header; every record has the header's width."""
        block_rows = chunking.text_rows(self.width)
        try:
            with self._open() as fh:
                reader = csv.reader(fh, delimiter=self.delimiter)
                seen_header = False
                block: list[list[str]] = []
                start = 0
                for row in reader:
                    if not row:
                        continue
                    if not seen_header:
                        seen_header = True
                        continue
                    if len(row) != self.width:
                        raise GlaInputError(f"line {reader.line_num} has {len(row)} fields, the header has "
                                            f"{self.width}", self.path)
                    block.append(row)
                    if len(block) == block_rows:
                        yield start, block
                        start += len(block)
                        block = []
                if block:
                    yield start, block
        except UnicodeDecodeError as exc:
            raise GlaInputError(f"is not UTF-8 text: {exc}", self.path) from exc
        except csv.Error as exc:
            raise GlaInputError(f"cannot be parsed as CSV: {exc}", self.path) from exc

    def count_and_labels(self, classnames: Sequence[str] | None) -> tuple[int, np.ndarray | None]:
        """First pass: number of data rows and the label column (checked for ragged lines)."""
        n_rows, parts = 0, []
        for start, block in self.blocks():
            n_rows = start + len(block)
            if self.label_col is not None:
                parts.append(self._labels(_cells(block, self.label_col), classnames, start))
        if n_rows == 0:
            raise GlaInputError("has a header but no data rows", self.path)
        return n_rows, (np.concatenate(parts) if parts else None)

    def _labels(self, cells: np.ndarray, classnames: Sequence[str] | None, start: int) -> np.ndarray:
        """Label cells as class indices: integers, integral floats (``3.0``), class names, or empty (= -1)."""
        unique, inverse = np.unique(np.char.strip(cells), return_inverse=True)
        index = {name: k for k, name in enumerate(classnames or ())}
        mapped = np.empty(len(unique), dtype=np.int64)
        for k, cell in enumerate(unique.tolist()):
            if cell == "":
                mapped[k] = -1
            elif _is_number(cell) and float(cell) == round(float(cell)):
                mapped[k] = int(round(float(cell)))
            elif cell in index:
                mapped[k] = index[cell]
            else:
                row = start + int(np.argmax(inverse == k))
                raise GlaInputError(f"label {cell!r} in column {self.header[self.label_col]!r} at data row {row} "
                                    "is neither a class index nor a class name", self.path)
        return mapped[inverse.reshape(-1)]

    def value_chunks(self, rows: int = 0) -> Chunks:
        """Second pass: float64 values and ids, one block of records at a time (``rows`` is unused:
        the blocks are the parser's)."""
        cols = self.value_cols
        label_like = np.full(len(cols), self.label_names is not None)
        for start, block in self.blocks():
            lines = [",".join([row[k] for k in cols]) for row in block]
            try:
                values = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
            except ValueError:
                values = None
            if values is None or values.shape != (len(block), len(cols)):
                self._raise_non_numeric(block, start)
            if label_like.any():
                label_like &= ((values == np.round(values)) & (values >= 0) & (values < len(cols) - 1)).all(0)
            ids = None if self.id_col is None else np.char.strip(_cells(block, self.id_col)).tolist()
            yield start, values, ids
        if label_like.any() and not label_like.all():
            self._refuse_label_like(cols[int(np.argmax(label_like))], f"only integers in [0, {len(cols) - 1})")

    def _refuse_label_like(self, col: int, holds: str) -> None:
        name = self.header[col]
        raise GlaInputError(f"no label column was found (tried {', '.join(LABEL_COLUMNS)}), but column {name!r} "
                            f"holds {holds}: if it holds the labels, give --label-column {name}", self.path)

    def _raise_non_numeric(self, block: list[list[str]], start: int) -> None:
        for col in self.value_cols:
            cells = _cells(block, col)
            bad = ~np.vectorize(_is_number, otypes=[bool])(cells)
            if bad.any() and self.label_names is not None and set(np.char.strip(cells).tolist()) <= {
                    *self.label_names, ""}:
                self._refuse_label_like(col, "class names")
            if bad.any():
                row = int(np.argmax(bad))
                raise GlaInputError(f"non-numeric value {str(cells[row])!r} in column {self.header[col]!r} "
                                    f"at data row {start + row}", self.path)
        raise GlaInputError(f"values in data rows {start} to {start + len(block) - 1} cannot be read as numbers",
                            self.path)


def read_rows(path: Path, kind: str, options: ReadOptions) -> RowSource:
    """Rows of a CSV/TSV: one column per class for logits (the header names the classes), any
    number of value columns for features, and optional label and id columns. Text labels are
    looked up in the given class names, else the header's."""
    table = CsvTable(path, options.label_column, options.id_column)
    names = None if kind == "features" else check_classnames([table.header[k] for k in table.value_cols], path)
    # text labels name classes: of the header where it names them (labels index the file's columns), else
    # of --classnames
    lookup = names if names is not None and not positional_classnames(names) else options.classnames
    if kind == "logits" and table.label_col is None:
        table.label_names = [*(names or ()), *(options.classnames or ())]
    n_rows, labels = table.count_and_labels(lookup)
    label_name = table.header[table.label_col] if table.label_col is not None else None
    return RowSource(path, n_rows, len(table.value_cols), names, labels,
                     labels_from=f"column {label_name!r}" if label_name else "none",
                     ids_from=f"column {table.header[table.id_col]!r}" if table.id_col is not None else "generated",
                     classnames_from="CSV header", dtype=np.dtype(np.float64), chunks=table.value_chunks)


def read_prior(path: Path, key: str | None) -> tuple[list[str] | None, Any, dict[str, Any]]:
    """(class names or None, prior values, attributes) of a CSV with a ``prior`` (or ``q``, ``p``)
    column and optionally a ``class`` column."""
    table = CsvTable(path, None, None)
    lowered = [h.lower() for h in table.header]
    name_col = next((lowered.index(c) for c in PRIOR_CLASS_COLUMNS if c in lowered), None)
    value_col = next((lowered.index(c) for c in PRIOR_VALUE_COLUMNS if c in lowered), None)
    if value_col is None:
        raise GlaInputError(f"a prior CSV needs a column named {' or '.join(PRIOR_VALUE_COLUMNS)} "
                            "(and optionally 'class')", path)
    names, values = [], []
    for start, block in table.blocks():
        cells = _cells(block, value_col)
        if not all(_is_number(c) for c in cells.tolist()):
            row = start + next(i for i, c in enumerate(cells.tolist()) if not _is_number(c))
            raise GlaInputError(f"non-numeric prior value at data row {row}", path)
        values.append(cells.astype(np.float64))
        if name_col is not None:
            names.extend(np.char.strip(_cells(block, name_col)).tolist())
    if not values:
        raise GlaInputError("has a header but no data rows", path)
    return (names or None), np.concatenate(values), {}


def write_rows(src: RowFile, output: Path) -> list[str]:
    """One column per class (logits) or dimension (features), then ``label`` and ``id``."""
    columns = list(src.classnames) if src.kind == "logits" else [f"dim_{k}" for k in range(src.n_cols)]
    clash = {"label", "id"} & set(columns)
    if clash:
        raise GlaInputError(f"a class is named {sorted(clash)[0]!r}, which the CSV needs for its own "
                            "column; export to .npz instead", src.path)
    dtype = src.dtype
    with atomic_output(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns + ["label", "id"])
        for chunk in src.iter_chunks(dtype=dtype, with_ids=True):
            cells = chunk.values.astype(str)  # shortest text that reads back to the same value
            writer.writerows(zip(*cells.T, chunk.labels.tolist(), chunk.ids))
    return columns + ["label", "id"]


def write_prior(prior: Prior, output: Path) -> list[str]:
    """Columns ``class`` and ``prior``, one row per class."""
    with atomic_output(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "prior"])
        writer.writerows(zip(prior.classnames, (repr(float(v)) for v in prior.prior)))
    return ["class", "prior"]
