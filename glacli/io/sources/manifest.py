"""Manifests: ``.csv``/``.tsv`` with a header (``path`` and optionally ``label``), or ``.txt`` lines
``path label`` as ImageNet-LT and Places-LT ship them; for text encoders, a ``.csv``/``.tsv`` whose
``text`` column holds the texts themselves (plus ``label`` and an optional ``id``).

Rows keep the file's order. Relative paths start from ``--root`` (default: the manifest's folder).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from glacli.base.errors import GlaInputError
from glacli.base.types import InlineText, Rows
from glacli.io.sources.base import Layout, Request, resolve_labels

SUFFIXES = (".csv", ".tsv", ".txt")


def list_rows(request: Request) -> Rows:
    path = request.path
    if request.input_kind == "text":
        if request.root is not None:
            raise GlaInputError("--root does not apply to a text manifest (it holds the texts)", path)
        return _text_rows(path, request.classnames)
    root = Path(request.root) if request.root else path.parent
    text = _read(path)
    if path.suffix == ".txt":
        paths, raw_labels = _parse_txt(text)
    else:
        paths, raw_labels = _parse_delimited(text, path, "\t" if path.suffix == ".tsv" else ",")
    labels, classnames, warnings = resolve_labels(raw_labels, request.classnames, path)
    base = root.resolve()
    locators = [p if os.path.isabs(p) else os.path.join(base, p) for p in paths]
    return Rows(locators, paths, labels, classnames, "manifest",
                {"source": str(path.resolve()), "source_kind": "manifest", "root": str(base)}, warnings)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GlaInputError(f"manifest is not UTF-8 text ({exc.reason})", path) from exc


def _parse_txt(text: str) -> tuple[list[str], list[str | None]]:
    """Lines ``path label``: the label is the last whitespace-separated field; a lone path is unlabelled."""
    paths: list[str] = []
    labels: list[str | None] = []
    for line in text.splitlines():
        fields = line.strip().rsplit(maxsplit=1)
        if not fields or line.lstrip().startswith("#"):
            continue
        paths.append(fields[0])
        labels.append(fields[1] if len(fields) == 2 else None)
    return paths, labels


def _parse_delimited(text: str, path: Path, delimiter: str) -> tuple[list[str], list[str | None]]:
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header and "text" in header:
        raise GlaInputError("this manifest lists texts (a 'text' column), but the encoder reads images", path)
    if "path" not in header:
        raise GlaInputError(f"manifest needs a header with a 'path' column (and optionally 'label'), "
                            f"got {header[:4]}", path)
    path_col = header.index("path")
    label_col = header.index("label") if "label" in header else None
    paths: list[str] = []
    labels: list[str | None] = []
    for line_no, record in enumerate(reader, start=2):
        if not record or not any(cell.strip() for cell in record):
            continue
        if len(record) <= max(path_col, label_col or 0):
            raise GlaInputError(f"line {line_no} has {len(record)} fields, expected {len(header)}", path)
        paths.append(record[path_col].strip())
        label = record[label_col].strip() if label_col is not None else ""
        labels.append(label or None)
    return paths, labels


def _text_rows(path: Path, given_names: list[str] | None) -> Rows:
    """A ``.csv``/``.tsv`` whose ``text`` column holds the texts (quoted cells may span lines),
    with optional ``label`` and ``id`` columns; ids default to the row number (0, 1, ...)."""
    if path.suffix not in (".csv", ".tsv"):
        raise GlaInputError("a text manifest is a .csv or .tsv file with a 'text' column", path)
    content = _read(path)
    previous_limit = csv.field_size_limit(2**31 - 1)  # documents may be longer than csv's 128 KiB default
    try:
        records = list(csv.reader(io.StringIO(content, newline=""), delimiter="\t" if path.suffix == ".tsv" else ","))
    except csv.Error as exc:
        raise GlaInputError(f"manifest is not valid {path.suffix[1:].upper()} ({exc})", path) from exc
    finally:
        csv.field_size_limit(previous_limit)
    header = [h.strip().lower() for h in (records[0] if records else [])]
    if "text" not in header:
        if "path" in header:
            raise GlaInputError("this manifest lists image paths, but the encoder reads texts "
                                "(give a 'text' column)", path)
        raise GlaInputError(f"text manifest needs a header with a 'text' column (and optionally 'label', 'id'), "
                            f"got {header[:4]}", path)
    columns = {name: header.index(name) for name in ("text", "label", "id") if name in header}
    texts: list[str] = []
    ids: list[str] = []
    raw_labels: list[str | None] = []
    for record_no, record in enumerate(records[1:], start=1):
        if not any(cell.strip() for cell in record):
            continue
        if len(record) <= max(columns.values()):
            raise GlaInputError(f"record {record_no} has {len(record)} fields, expected {len(header)}", path)
        given_id = record[columns["id"]].strip() if "id" in columns else ""
        ids.append(given_id or str(len(texts)))
        texts.append(record[columns["text"]])
        label = record[columns["label"]].strip() if "label" in columns else ""
        raw_labels.append(label or None)
    labels, classnames, warnings = resolve_labels(raw_labels, given_names, path)
    return Rows([InlineText(t) for t in texts], ids, labels, classnames, "manifest",
                {"source": str(path.resolve()), "source_kind": "text_manifest"}, warnings, input_kind="text")


LAYOUT = Layout(
    name="manifests",
    help="a manifest: .csv/.tsv with path,label columns or .txt lines 'path label' (text encoders: .csv/.tsv "
         "with text,label[,id] columns)",
    claims=lambda source: Path(source).suffix in SUFFIXES, list_rows=list_rows,
    options=frozenset({"--root", "--classnames"}))
