"""Between gla's HDF5 kinds and the formats other tools write: .npy, .npz, .csv/.tsv, .pt, .json.

Imports turn a foreign file into a ``logits``, ``features`` or ``prior`` file; exports write a
gla file out again. Rows are streamed in chunks on both sides (``.npy`` is memory-mapped, CSV is
parsed block by block, exports are written chunk by chunk), so memory does not grow with N,
except that an ``.npz`` entry or a ``.pt`` tensor is necessarily loaded whole.

Every problem with a foreign file is a :class:`GlaInputError` naming that file. Outputs are
written atomically: gla files through the store, foreign files through :func:`glacli.store.atomic_output`.
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glacli import store
from glacli.classnames import check_classnames, read_classnames
from glacli.errors import GlaInputError, one_line

IMPORT_KINDS = ("logits", "features", "prior")
IMPORT_SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".pt", ".pth", ".json")
EXPORT_SUFFIXES = {
    "prior": (".json", ".npy", ".csv"),
    "logits": (".npy", ".npz", ".csv"),
    "features": (".npy", ".npz", ".csv"),
    "head": (".npz", ".pt"),
}
# Names other tools give their arrays and columns, tried in this order.
VALUE_KEYS = {
    "logits": ("logits", "predictions", "probs", "probabilities", "scores", "values", "outputs", "x"),
    "features": ("features", "embeddings", "feats", "values", "x"),
    "prior": ("prior", "q", "p", "values"),
}
LABEL_KEYS = ("labels", "label", "ground_truth", "targets", "target", "y")
ID_KEYS = ("ids", "id", "instance_ids", "paths")
CLASSNAME_KEYS = ("classnames", "class_names", "classes")
LABEL_COLUMNS = ("label", "labels", "target", "target-0", "targets", "ground_truth", "y")
ID_COLUMNS = ("id", "ids", "instance_id", "sample_id", "image_id", "path", "filename")
PRIOR_CLASS_COLUMNS = ("class", "classname", "name")
PRIOR_VALUE_COLUMNS = ("prior", "q", "p")
CSV_CELL_BUDGET = 2**20
"""Cells parsed per CSV block: bounds the Python strings alive at once (about 60 MB)."""
TINY = float(np.finfo(np.float32).tiny)
"""Probabilities of exactly 0 are stored as log(TINY) so that the logits stay finite."""


# --------------------------------------------------------------------------- small helpers


def default_classnames(n: int) -> list[str]:
    return [f"class_{k}" for k in range(n)]


def default_ids(start: int, stop: int) -> list[str]:
    return [f"row_{i:06d}" for i in range(start, stop)]


def check_labels(labels: np.ndarray, n_classes: int, path: str | Path, row_offset: int = 0) -> None:
    """Labels must be -1 (unknown) or a class index."""
    bad = (labels < -1) | (labels >= n_classes)
    if bad.any():
        k = int(np.argmax(bad))
        raise GlaInputError(f"label {int(labels[k])} at row {row_offset + k} is out of range for "
                            f"{n_classes} classes", path)


def as_labels(values: Any, path: str | Path, what: str) -> np.ndarray:
    """A 1-D integer label vector; integral floats (``3.0``) are accepted."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise GlaInputError(f"{what} has shape {array.shape}, expected a vector of labels", path)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        store.require_finite(array, what, path)
        if (array != np.round(array)).any():
            k = int(np.argmax(array != np.round(array)))
            raise GlaInputError(f"{what} entry {k} is {array[k]:g}, not an integer class index", path)
        return array.astype(np.int64)
    if array.dtype.kind == "b":
        return array.astype(np.int64)
    raise GlaInputError(f"{what} has dtype {array.dtype}, expected integer class indices", path)


def log_probabilities(probs: np.ndarray, path: str | Path, row_offset: int = 0) -> tuple[np.ndarray, int]:
    """``log p`` for probabilities in [0, 1]; zeros become ``log(TINY)``. Returns (logits, zeros)."""
    outside = (probs < 0) | (probs > 1)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise GlaInputError(f"--probabilities: value {probs[row, col]:g} at row {row_offset + int(row)} is "
                            "outside [0, 1]", path)
    zeros = int((probs == 0).sum())
    return np.log(np.maximum(probs, TINY)), zeros


def l2_normalise(values: np.ndarray, path: str | Path, row_offset: int = 0) -> np.ndarray:
    """Rows scaled to unit length (the features format requires it); an all-zero row is an error."""
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    if (norms == 0).any():
        raise GlaInputError(f"feature row {row_offset + int(np.argmax(norms[:, 0] == 0))} is all zeros "
                            "and cannot be L2-normalised", path)
    return values / norms


def looks_like_probabilities(values: np.ndarray) -> bool:
    return bool(values.size) and bool(((values >= 0) & (values <= 1)).all()) and bool(
        np.allclose(values.sum(1), 1.0, atol=1e-3))


# --------------------------------------------------------------------------- loading foreign files


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in IMPORT_SUFFIXES:
        raise GlaInputError(f"unknown file type {suffix or '(no extension)'!r}; gla imports "
                            f"{', '.join(IMPORT_SUFFIXES)}", path)
    return suffix


def _require_file(path: Path) -> None:
    if not path.exists():
        raise GlaInputError("no such file", path)
    if path.is_dir():
        raise GlaInputError("is a directory, not a file", path)


def _numeric(array: Any, path: Path, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "fiub":
        raise GlaInputError(f"{what} has dtype {array.dtype}, expected numbers", path)
    return array


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise GlaInputError(f"cannot be read as .npy ({exc})", path) from exc
    except OSError as exc:
        raise GlaInputError(f"cannot be read as .npy (truncated or corrupt): {exc}", path) from exc


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """All entries of an .npz file as a lazy mapping (entries load when indexed)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise GlaInputError(f"cannot be read as .npz: {exc}", path) from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise GlaInputError("is a single .npy array, not an .npz archive", path)
    return _NpzEntries(data, path)


class _NpzEntries(dict):
    """Read-only view of an NpzFile that turns pickled or corrupt entries into one-line errors."""

    def __init__(self, data: Any, path: Path):
        super().__init__((k, None) for k in data.files)
        self._data, self._path = data, path

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._data[key]
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise GlaInputError(f"entry {key!r} cannot be read: {exc}", self._path) from exc


def _load_pt(path: Path) -> Any:
    import pickle
    import re

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise GlaInputError(f"holds a pickled {refused.group(1)} object, which torch.load(weights_only=True) "
                                "refuses to load; save plain tensors or a dict of tensors", path) from exc
        raise GlaInputError("cannot be read as a torch file (not a torch archive or a tensor pickle)", path) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, zip errors for corrupt files
        raise GlaInputError(f"cannot be read as a torch file: {one_line(exc)}", path) from exc


def _pt_entries(obj: Any, path: Path) -> dict[str, Any]:
    """A torch file's content as named entries: a lone tensor is entry ``""``."""
    import torch

    if isinstance(obj, torch.Tensor):
        return {"": obj.detach().cpu().numpy()}
    if isinstance(obj, dict):
        entries: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(value, torch.Tensor):
                entries[str(key)] = value.detach().cpu().numpy()
            else:
                entries[str(key)] = value
        return entries
    raise GlaInputError(f"holds a {type(obj).__name__}; expected a tensor or a dict of tensors", path)


def _pick(entries: dict[str, Any], key: str | None, defaults: Sequence[str], path: Path, what: str,
          option: str, required: bool = False) -> str | None:
    """The entry to use: ``key`` if given, else the first default present, else the only other array."""
    if key is not None:
        if key not in entries:
            raise GlaInputError(f"has no entry {key!r} ({option}); entries: {', '.join(sorted(entries)) or 'none'}",
                                path)
        return key
    lowered = {k.lower(): k for k in entries}
    for name in defaults:
        if name in lowered:
            return lowered[name]
    if required:
        if "" in entries:
            return ""
        known = {k.lower() for k in (*LABEL_KEYS, *ID_KEYS, *CLASSNAME_KEYS)}
        others = [k for k, v in entries.items()
                  if k.lower() not in known and not isinstance(v, (str, list, int, float))]
        if len(others) == 1:
            return others[0]
        raise GlaInputError(f"no {what} entry found (tried {', '.join(defaults)}); choose one with {option}; "
                            f"entries: {', '.join(sorted(entries)) or 'none'}", path)
    return None


# --------------------------------------------------------------------------- row sources


@dataclass
class RowSource:
    """Rows of a foreign file: sizes, and what it said about classes, labels and ids."""

    path: Path
    n_rows: int
    n_cols: int
    classnames: list[str] | None
    labels: np.ndarray | None
    labels_from: str
    ids_from: str
    _values: Any = None
    _ids: Any = None
    _csv: _CsvTable | None = None

    @property
    def dtype(self) -> np.dtype:
        """The values' dtype in the file (CSV text counts as float64)."""
        return np.dtype(np.float64) if self._values is None else np.dtype(self._values.dtype)

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray, list[str] | None]]:
        """(start, float64 values, ids or None) for consecutive blocks of rows."""
        if self._csv is not None:
            yield from self._csv.value_chunks()
            return
        for start in range(0, self.n_rows, rows):
            stop = min(start + rows, self.n_rows)
            values = np.asarray(self._values[start:stop], dtype=np.float64)
            ids = None if self._ids is None else [str(i) for i in np.asarray(self._ids[start:stop]).tolist()]
            yield start, values, ids


def _array_source(path: Path, values: Any, entries: dict[str, Any], value_key: str | None,
                  labels_key: str | None) -> RowSource:
    values = _numeric(values, path, f"entry {value_key!r}" if value_key else "the array")
    if values.ndim != 2:
        raise GlaInputError(f"{'entry ' + repr(value_key) if value_key else 'the array'} has shape "
                            f"{values.shape}, expected 2 dimensions (rows x columns)", path)
    n_rows, n_cols = values.shape
    label_key = _pick(entries, labels_key, LABEL_KEYS, path, "labels", "--labels-key")
    labels = None
    if label_key is not None:
        labels = as_labels(entries[label_key], path, f"entry {label_key!r}")
        if len(labels) != n_rows:
            raise GlaInputError(f"entry {label_key!r} has {len(labels)} labels for {n_rows} rows", path)
    id_key = _pick(entries, None, ID_KEYS, path, "ids", "")
    ids = None
    if id_key is not None:
        ids = np.asarray(entries[id_key])
        if ids.ndim != 1 or len(ids) != n_rows:
            raise GlaInputError(f"entry {id_key!r} has shape {ids.shape}, expected {n_rows} ids", path)
    name_key = _pick(entries, None, CLASSNAME_KEYS, path, "classnames", "")
    names = None
    if name_key is not None:
        raw = entries[name_key]
        names = check_classnames(np.asarray(raw).tolist() if isinstance(raw, np.ndarray) else list(raw), path)
    return RowSource(path, n_rows, n_cols, names, labels,
                     labels_from=f"entry {label_key!r}" if label_key else "none",
                     ids_from=f"entry {id_key!r}" if id_key else "generated", _values=values, _ids=ids)


class _CsvTable:
    """A CSV/TSV file with a header, read in blocks of records: labels on the first pass, values on the second."""

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
        self.block_rows = max(1, min(65536, CSV_CELL_BUDGET // self.width))

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
                    if len(block) == self.block_rows:
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

    def value_chunks(self) -> Iterator[tuple[int, np.ndarray, list[str] | None]]:
        """Second pass: float64 values and ids, one block at a time (numbers parsed by NumPy's C reader)."""
        cols = self.value_cols
        for start, block in self.blocks():
            lines = [",".join([row[k] for k in cols]) for row in block]
            try:
                values = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
            except ValueError:
                values = None
            if values is None or values.shape != (len(block), len(cols)):
                self._raise_non_numeric(block, start)
            ids = None if self.id_col is None else np.char.strip(_cells(block, self.id_col)).tolist()
            yield start, values, ids

    def _raise_non_numeric(self, block: list[list[str]], start: int) -> None:
        for col in self.value_cols:
            cells = _cells(block, col)
            bad = ~np.vectorize(_is_number, otypes=[bool])(cells)
            if bad.any():
                row = int(np.argmax(bad))
                raise GlaInputError(f"non-numeric value {str(cells[row])!r} in column {self.header[col]!r} "
                                    f"at data row {start + row}", self.path)
        raise GlaInputError(f"values in data rows {start} to {start + len(block) - 1} cannot be read as numbers",
                            self.path)


def _cells(block: list[list[str]], column: int) -> np.ndarray:
    return np.array([row[column] for row in block], dtype=str)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def open_rows(path: str | Path, kind: str, *, key: str | None = None, labels_key: str | None = None,
              label_column: str | None = None, id_column: str | None = None,
              classnames: Sequence[str] | None = None) -> RowSource:
    """A foreign file's rows (logits or features), validated for shape; values are read by ``chunks``."""
    path = Path(path)
    suffix = _suffix(path)
    _require_file(path)
    if suffix == ".npy":
        return _array_source(path, _load_npy(path), {}, None, labels_key)
    if suffix == ".npz":
        entries = _load_npz(path)
        value_key = _pick(entries, key, VALUE_KEYS[kind], path, kind, "--key", required=True)
        return _array_source(path, entries[value_key], entries, value_key, labels_key)
    if suffix in (".pt", ".pth"):
        entries = _pt_entries(_load_pt(path), path)
        value_key = _pick(entries, key, VALUE_KEYS[kind], path, kind, "--key", required=True)
        return _array_source(path, entries[value_key], entries, value_key or None, labels_key)
    if suffix in (".csv", ".tsv"):
        table = _CsvTable(path, label_column, id_column)
        names = None if kind == "features" else check_classnames([table.header[k] for k in table.value_cols], path)
        n_rows, labels = table.count_and_labels(classnames or names)
        label_name = table.header[table.label_col] if table.label_col is not None else None
        return RowSource(path, n_rows, len(table.value_cols), names, labels,
                         labels_from=f"column {label_name!r}" if label_name else "none",
                         ids_from=f"column {table.header[table.id_col]!r}" if table.id_col is not None
                         else "generated", _csv=table)
    raise GlaInputError(f"{suffix} files hold priors only; import it with --kind prior", path)


# --------------------------------------------------------------------------- importing rows


@dataclass
class ImportReport:
    """What an import did, for the command to show."""

    source: str
    output: str
    kind: str
    n_rows: int = 0
    n_cols: int = 0
    n_classes: int = 0
    classnames_from: str = ""
    labels_from: str = ""
    labelled_rows: int = 0
    ids_from: str = ""
    notes: list[str] = field(default_factory=list)


def import_rows(path: str | Path, kind: str, output: str | Path, *, key: str | None = None,
                labels_key: str | None = None, label_column: str | None = None, id_column: str | None = None,
                classnames_file: str | Path | None = None, labels_file: str | Path | None = None,
                probabilities: bool = False) -> ImportReport:
    """Import logits or features from a foreign file into a gla file at ``output``.

    Logits are stored as float32 (``--probabilities``: their log, zeros as log(TINY));
    features are L2-normalised and stored as float32 (float16 input stays float16).
    """
    path = Path(path)
    if probabilities and kind != "logits":
        raise GlaInputError(f"--probabilities applies to logits, not {kind}")
    names_given = read_classnames(classnames_file) if classnames_file else None
    src = open_rows(path, kind, key=key, labels_key=labels_key, label_column=label_column,
                    id_column=id_column, classnames=names_given)
    report = ImportReport(str(path), str(output), kind, n_rows=src.n_rows, n_cols=src.n_cols,
                          labels_from=src.labels_from, ids_from=src.ids_from)

    labels = src.labels
    if labels_file is not None:
        labels = _labels_file(Path(labels_file), src.n_rows)
        report.labels_from = str(labels_file)
    if labels is None:
        labels = np.full(src.n_rows, -1, dtype=np.int64)

    if names_given is not None:
        names, report.classnames_from = names_given, str(classnames_file)
    elif src.classnames is not None:
        names = src.classnames
        report.classnames_from = "CSV header" if src._csv is not None else "the file"
    elif kind == "logits":
        names, report.classnames_from = default_classnames(src.n_cols), "generated"
    else:
        if not (labels >= 0).any():
            raise GlaInputError("features without labels need --classnames FILE (the number of classes "
                                "cannot be inferred)", path)
        names, report.classnames_from = default_classnames(int(labels.max()) + 1), "generated from the labels"
    if kind == "logits" and len(names) != src.n_cols:
        where = report.classnames_from
        raise GlaInputError(f"has {src.n_cols} class columns but {len(names)} class names ({where})", path)
    check_labels(labels, len(names), labels_file or path)
    report.n_classes, report.labelled_rows = len(names), int((labels >= 0).sum())

    stored = np.float16 if kind == "features" and src.dtype == np.float16 else np.float32
    attrs: dict[str, Any] = {"source": path.name, "imported_from": path.suffix.lstrip(".")}
    if kind == "logits":
        attrs["temperature"] = 1.0
        if probabilities:
            attrs["from_probabilities"] = True
    zeros, flagged_probabilities = 0, False
    with store.write_rows(output, kind, n_rows=src.n_rows, n_cols=src.n_cols, classnames=names,
                          attrs=attrs, dtype=stored) as sink:
        for start, values, ids in src.chunks(store.chunk_rows(src.n_cols, 8)):
            store.require_finite(values, kind, path, start)
            if kind == "logits" and probabilities:
                values, n_zero = log_probabilities(values, path, start)
                zeros += n_zero
            elif kind == "logits" and not flagged_probabilities and looks_like_probabilities(values):
                flagged_probabilities = True
            if kind == "features":
                values = l2_normalise(values, path, start)
            stop = start + len(values)
            sink.write(start, values.astype(stored), labels[start:stop], ids or default_ids(start, stop))
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


def _labels_file(path: Path, n_rows: int) -> np.ndarray:
    if path.suffix.lower() != ".npy":
        raise GlaInputError("--labels expects a .npy file of class indices", path)
    _require_file(path)
    labels = as_labels(_load_npy(path), path, "the labels")
    if len(labels) != n_rows:
        raise GlaInputError(f"holds {len(labels)} labels for {n_rows} rows", path)
    return labels


# --------------------------------------------------------------------------- importing priors


def import_prior(path: str | Path, output: str | Path, *, key: str | None = None,
                 classnames_file: str | Path | None = None, temperature: float | None = None) -> ImportReport:
    """Import a label prior; it is normalised to sum to 1 (the report says so when it did not)."""
    path = Path(path)
    suffix = _suffix(path)
    _require_file(path)
    names, values, attrs = _read_prior(path, suffix, key)
    values = _numeric(values, path, "the prior").astype(np.float64)
    if values.ndim != 1:
        raise GlaInputError(f"the prior has shape {values.shape}, expected a vector (one entry per class)", path)
    if values.size == 0:
        raise GlaInputError("the prior is empty", path)
    store.require_finite(values, "prior", path)
    if (values <= 0).any():
        k = int(np.argmax(values <= 0))
        raise GlaInputError(f"prior entry {k} is {values[k]:g}; every class needs a positive prior", path)
    report = ImportReport(str(path), str(output), "prior", n_cols=len(values), n_classes=len(values),
                          classnames_from="the file" if names else "generated")
    if classnames_file is not None:
        names, report.classnames_from = read_classnames(classnames_file), str(classnames_file)
    names = check_classnames(names, path) if names else default_classnames(len(values))
    if len(names) != len(values):
        raise GlaInputError(f"has {len(values)} prior entries but {len(names)} class names "
                            f"({report.classnames_from})", path)
    total = float(values.sum())
    if abs(total - 1.0) > store.PRIOR_SUM_TOLERANCE:
        report.notes.append(f"normalised the prior to sum to 1 (it summed to {total:.6g})")
    if temperature is None:
        temperature = float(attrs.get("temperature", 1.0))
    if not (np.isfinite(temperature) and temperature > 0):
        raise GlaInputError(f"temperature {temperature} is not a positive number", path)
    kept = {k: v for k, v in attrs.items() if k not in store.PROVENANCE_ATTRS and
            k not in ("temperature", "method", "converged", "max_moment_gap", "iterations")}
    prior = store.Prior(prior=values / total, classnames=names, temperature=temperature,
                        method=str(attrs.get("method", "imported")), converged=bool(attrs.get("converged", True)),
                        max_moment_gap=float(attrs.get("max_moment_gap", 0.0)),
                        iterations=int(attrs.get("iterations", 0)),
                        attrs={**kept, "source": path.name, "imported_from": suffix.lstrip("."),
                               "imported_sum": total})
    store.write_prior(output, prior)
    return report


def _read_prior(path: Path, suffix: str, key: str | None) -> tuple[list[str] | None, Any, dict[str, Any]]:
    """(class names or None, prior values, attributes) from any supported file."""
    if suffix == ".json":
        return _read_prior_json(path)
    if suffix == ".npy":
        return None, _load_npy(path), {}
    if suffix in (".csv", ".tsv"):
        return _read_prior_csv(path)
    entries = _load_npz(path) if suffix == ".npz" else _pt_entries(_load_pt(path), path)
    value_key = _pick(entries, key, VALUE_KEYS["prior"], path, "prior", "--key", required=True)
    name_key = _pick(entries, None, CLASSNAME_KEYS, path, "classnames", "")
    names = None
    if name_key is not None:
        raw = entries[name_key]
        names = np.asarray(raw).tolist() if isinstance(raw, np.ndarray) else list(raw)
    return names, entries[value_key], {}


def _read_prior_json(path: Path) -> tuple[list[str] | None, Any, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GlaInputError(f"is not valid JSON: {exc}", path) from exc
    if isinstance(data, list):
        return None, _json_numbers(data, path), {}
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
    return names, _json_numbers(data["prior"], path), attrs


def _json_numbers(values: Any, path: Path) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise GlaInputError("the prior must be a flat list of numbers", path)
    return np.asarray(values, dtype=np.float64)


def _read_prior_csv(path: Path) -> tuple[list[str] | None, Any, dict[str, Any]]:
    table = _CsvTable(path, None, None)
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


# --------------------------------------------------------------------------- exporting


@dataclass
class ExportReport:
    source: str
    output: str
    kind: str
    shape: tuple[int, ...]
    entries: list[str]


def export_file(path: str | Path, output: str | Path) -> ExportReport:
    """Write the gla file at ``path`` to ``output``, in the format its extension names."""
    path, output = Path(path), Path(output)
    kind = store.file_kind(path)
    suffix = output.suffix.lower()
    allowed = EXPORT_SUFFIXES[kind]
    if suffix not in allowed:
        raise GlaInputError(f"cannot export a {kind} file as {suffix or '(no extension)'!r}; "
                            f"choose {', '.join(allowed)}", output)
    if output.resolve() == path.resolve():
        raise GlaInputError("the output would overwrite the input", output)
    if kind == "prior":
        return _export_prior(store.read_prior(path), path, output, suffix)
    if kind == "head":
        return _export_head(store.read_head(path), path, output, suffix)
    with store.RowFile(path, (kind,)) as src:
        writer = {".npy": _export_rows_npy, ".npz": _export_rows_npz, ".csv": _export_rows_csv}[suffix]
        entries = writer(src, output)
        return ExportReport(str(path), str(output), kind, (src.n_rows, src.n_cols), entries)


def _export_prior(prior: store.Prior, path: Path, output: Path, suffix: str) -> ExportReport:
    with store.atomic_output(output) as tmp:
        if suffix == ".json":
            payload = {"classnames": prior.classnames, "prior": prior.prior.tolist(), "attributes": prior.attrs}
            tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
            entries = ["classnames", "prior", "attributes"]
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, prior.prior)
            entries = ["prior"]
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["class", "prior"])
                writer.writerows(zip(prior.classnames, (repr(float(v)) for v in prior.prior)))
            entries = ["class", "prior"]
    return ExportReport(str(path), str(output), "prior", prior.prior.shape, entries)


def _export_head(head: store.Head, path: Path, output: Path, suffix: str) -> ExportReport:
    entries = ["weight", "bias", "classnames", "temperature", "head_type"]
    with store.atomic_output(output) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, weight=head.weight, bias=head.bias, classnames=np.array(head.classnames, dtype=str),
                         temperature=np.float64(head.temperature), head_type=np.array(head.head_type))
        else:
            import torch

            torch.save({"weight": torch.from_numpy(head.weight), "bias": torch.from_numpy(head.bias),
                        "classnames": list(head.classnames), "temperature": float(head.temperature),
                        "head_type": head.head_type}, tmp)
    return ExportReport(str(path), str(output), "head", head.weight.shape, entries)


def _export_rows_npy(src: store.RowFile, output: Path) -> list[str]:
    dtype = src.dtype
    with store.atomic_output(output) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(src.n_rows, src.n_cols))
        for chunk in src.iter_chunks(dtype=dtype):
            array[chunk.start:chunk.stop] = chunk.values
        array.flush()
        del array
    return [src.kind]


def _write_npy_entry(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...],
                     chunks: Iterator[np.ndarray]) -> None:
    """One .npy member of an .npz archive, written chunk by chunk."""
    with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_2_0(
            fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        for chunk in chunks:
            fh.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())


def _export_rows_npz(src: store.RowFile, output: Path) -> list[str]:
    dtype = src.dtype
    step = store.chunk_rows(src.n_cols)
    id_width = max([1] + [max((len(i) for i in src.ids(s, s + 65536)), default=1)
                          for s in range(0, src.n_rows, 65536)])
    id_dtype = np.dtype(f"<U{id_width}")
    with store.atomic_output(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        _write_npy_entry(zf, src.kind, dtype, (src.n_rows, src.n_cols),
                         (c.values for c in src.iter_chunks(step, dtype=dtype)))
        _write_npy_entry(zf, "labels", np.dtype(np.int64), (src.n_rows,), iter([src.labels]))
        _write_npy_entry(zf, "ids", id_dtype, (src.n_rows,),
                         (np.array(src.ids(s, s + 65536), dtype=id_dtype) for s in range(0, src.n_rows, 65536)))
        names = np.array(src.classnames, dtype=str)
        _write_npy_entry(zf, "classnames", names.dtype, names.shape, iter([names]))
    return [src.kind, "labels", "ids", "classnames"]


def _export_rows_csv(src: store.RowFile, output: Path) -> list[str]:
    columns = list(src.classnames) if src.kind == "logits" else [f"dim_{k}" for k in range(src.n_cols)]
    clash = {"label", "id"} & set(columns)
    if clash:
        raise GlaInputError(f"a class is named {sorted(clash)[0]!r}, which the CSV needs for its own "
                            "column; export to .npz instead", src.path)
    dtype = src.dtype
    with store.atomic_output(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns + ["label", "id"])
        for chunk in src.iter_chunks(dtype=dtype, with_ids=True):
            cells = chunk.values.astype(str)  # shortest text that reads back to the same value
            writer.writerows(zip(*cells.T, chunk.labels.tolist(), chunk.ids))
    return columns + ["label", "id"]
