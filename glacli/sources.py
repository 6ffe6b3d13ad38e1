"""Data sources of ``gla extract`` -> rows: what to read (a locator), a sample id and a label.

Listing is pure: nothing here decodes an image. Supported layouts (see docs/extract.md):

- an image-folder tree, one sub-folder per class (class names: folder names, ``_`` as spaces);
- a manifest: ``.csv``/``.tsv`` with a ``path`` column (and optionally ``label``), or ``.txt``
  lines ``path label`` (ImageNet-LT, Places-LT);
- a CoOp-style split JSON ``{"train": [[path, label, classname], ...], ...}`` with a split name;
- webdataset-style ``.tar`` shards (a path or a glob): image entries with ``.cls`` label entries.

Rows keep a deterministic order (folders: sorted relative path; manifests and shards: file order).
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glacli.errors import GlaInputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt")
SPLITS = ("train", "val", "test")
_INTEGER = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class TarMember:
    """One entry of an uncompressed tar shard, read by offset so workers need no tar index."""

    shard: str
    offset: int
    size: int


Locator = str | TarMember
"""What a loader reads for one row: an absolute file path or a tar member."""


@dataclass
class Rows:
    """The rows of a source, in extraction order, and its classes."""

    locators: list[Locator]
    ids: list[str]
    labels: np.ndarray
    classnames: list[str]
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    """What a features file records about the source (``source``, ``source_kind``, ``split``...)."""
    warnings: list[str] = field(default_factory=list)
    input_kind: str = "image"
    """What the locators hold, matched against the encoder's ``input_kind``."""

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, indices: np.ndarray) -> Rows:
        """The rows at ``indices`` (kept in the given order)."""
        return Rows([self.locators[i] for i in indices], [self.ids[i] for i in indices], self.labels[indices],
                    self.classnames, self.kind, dict(self.attrs), list(self.warnings), self.input_kind)

    def digest(self) -> str:
        """A fingerprint of ids, labels and classes: two listings with the same digest are the same rows."""
        h = hashlib.sha256()
        h.update("\n".join([*self.classnames, "\0", *self.ids]).encode("utf-8"))
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()


def open_source(source: str, *, split: str | None = None, root: str | None = None,
                classnames_file: str | None = None) -> Rows:
    """List the rows of ``source`` (folder, manifest, split JSON, or tar shards/glob)."""
    path = Path(source)
    if split is not None and path.suffix != ".json":
        raise GlaInputError("--split applies to CoOp split JSON files only", source)
    if root is not None and (path.is_dir() or _is_tar_source(source)):
        raise GlaInputError("--root applies to manifests and split JSON files only", source)
    given_names = read_classnames(classnames_file) if classnames_file else None
    if _is_tar_source(source):
        rows = _tar_rows(source, given_names)
    elif not path.exists():
        raise GlaInputError("no such file or folder", source)
    elif path.is_dir():
        if given_names is not None:
            raise GlaInputError("--classnames does not apply to an image folder (classes are its sub-folders)",
                                source)
        rows = _folder_rows(path, IMAGE_EXTENSIONS)
    elif path.suffix in MANIFEST_SUFFIXES:
        rows = _manifest_rows(path, Path(root) if root else path.parent, given_names)
    elif path.suffix == ".json":
        if given_names is not None:
            raise GlaInputError("--classnames does not apply to a split JSON (it names its classes)", source)
        rows = _split_rows(path, split, Path(root) if root else path.parent)
    else:
        raise GlaInputError("unrecognised source: expected an image folder, a .csv/.tsv/.txt manifest, "
                            "a split .json or .tar shards", source)
    if not len(rows):
        raise GlaInputError("source lists no images", source)
    if classnames_file:
        rows.attrs["classnames_file"] = str(Path(classnames_file).resolve())
    return rows


def read_classnames(path_text: str) -> list[str]:
    """One class name per line (blank lines ignored); names must be unique."""
    path = Path(path_text)
    if not path.is_file():
        raise GlaInputError("class names: no such file", path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise GlaInputError(f"class names are not UTF-8 text ({exc.reason})", path) from exc
    names = [n for n in names if n]
    if not names:
        raise GlaInputError("class names file is empty", path)
    seen: set[str] = set()
    for k, name in enumerate(names):
        if name in seen:
            raise GlaInputError(f"class name {name!r} appears twice (line {k + 1})", path)
        seen.add(name)
    return names


def select_shots(rows: Rows, shots: int, seed: int) -> Rows:
    """``shots`` rows per class, drawn without replacement by a seeded generator; order kept.

    Deterministic: the same rows, shots and seed give the same selection. Classes with fewer
    rows keep all of them (and a warning says which).
    """
    if shots < 1:
        raise GlaInputError(f"--shots: expected a positive integer, got {shots}")
    if (rows.labels < 0).any():
        k = int(np.argmax(rows.labels < 0))
        raise GlaInputError(f"--shots needs labels, but row {k} ({rows.ids[k]}) has none", rows.attrs.get("source"))
    keys = np.random.default_rng(seed).random(len(rows))
    order = np.lexsort((keys, rows.labels))
    sorted_labels = rows.labels[order]
    first_of_class = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.arange(len(order)) - first_of_class
    chosen = np.sort(order[rank_in_class < shots])
    counts = np.bincount(rows.labels, minlength=len(rows.classnames))
    short = [rows.classnames[c] for c in np.flatnonzero(counts < shots)]
    selected = rows.take(chosen)
    selected.attrs.update(shots=shots, seed=seed)
    if short:
        listed = ", ".join(repr(n) for n in short[:5]) + (" ..." if len(short) > 5 else "")
        selected.warnings.append(f"{len(short)} classes have fewer than {shots} images and keep all they have: "
                                 f"{listed}")
    return selected


def read_bytes(locator: Locator) -> bytes:
    """The raw bytes of one row (runs in DataLoader workers)."""
    if isinstance(locator, TarMember):
        with open(locator.shard, "rb") as f:
            f.seek(locator.offset)
            data = f.read(locator.size)
        if len(data) != locator.size:
            raise OSError(f"{locator.shard}: truncated at offset {locator.offset}")
        return data
    with open(locator, "rb") as f:
        return f.read()


# --------------------------------------------------------------------------- folders


def _folder_rows(root: Path, extensions: frozenset[str]) -> Rows:
    """One sub-folder per class; files below it (any depth) with a known extension, sorted."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise GlaInputError("image folder has no class sub-folders", root)
    ids: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(root)
            for name in filenames:
                if not name.startswith(".") and Path(name).suffix.lower() in extensions:
                    ids.append((rel_dir / name).as_posix())
                    labels.append(label)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    ids = [ids[i] for i in order]
    base = str(root.resolve())
    classnames = [d.name.replace("_", " ") for d in class_dirs]
    _check_unique(classnames, root)
    return Rows([os.path.join(base, i) for i in ids], ids, np.asarray(labels, np.int64)[order], classnames,
                "folder", {"source": base, "source_kind": "folder"})


# --------------------------------------------------------------------------- manifests


def _manifest_rows(path: Path, root: Path, given_names: list[str] | None) -> Rows:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GlaInputError(f"manifest is not UTF-8 text ({exc.reason})", path) from exc
    if path.suffix == ".txt":
        paths, raw_labels = _parse_txt_manifest(text, path)
    else:
        paths, raw_labels = _parse_delimited_manifest(text, path, "\t" if path.suffix == ".tsv" else ",")
    labels, classnames, warnings = _resolve_labels(raw_labels, given_names, path)
    base = root.resolve()
    locators = [p if os.path.isabs(p) else os.path.join(base, p) for p in paths]
    return Rows(locators, paths, labels, classnames, "manifest",
                {"source": str(path.resolve()), "source_kind": "manifest", "root": str(base)}, warnings)


def _parse_txt_manifest(text: str, path: Path) -> tuple[list[str], list[str | None]]:
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


def _parse_delimited_manifest(text: str, path: Path, delimiter: str) -> tuple[list[str], list[str | None]]:
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader, [])]
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


def _resolve_labels(raw: list[str | None], given_names: list[str] | None, path: Path | str
                    ) -> tuple[np.ndarray, list[str], list[str]]:
    """Integer labels index ``given_names`` (or become names "0".."C-1"); text labels are class names."""
    known = [r for r in raw if r is not None]
    warnings: list[str] = []
    if known and all(_INTEGER.match(r) for r in known):
        values = np.array([int(r) if r is not None else -1 for r in raw], dtype=np.int64)
        if (values < -1).any():
            raise GlaInputError(f"label {int(values.min())} is negative", path)
        if given_names is None:
            n_classes = int(values.max()) + 1 if known else 0
            names = [str(k) for k in range(n_classes)]
            warnings.append("integer labels without --classnames: classes are named by their numbers")
        else:
            names = given_names
            if values.max(initial=-1) >= len(names):
                raise GlaInputError(f"label {int(values.max())} is out of range for the "
                                    f"{len(names)} classes of --classnames", path)
        return values, names, warnings
    if given_names is None:
        names = sorted(set(known))
    else:
        names = given_names
        unknown = sorted(set(known) - set(names))
        if unknown:
            raise GlaInputError(f"label {unknown[0]!r} is not in --classnames", path)
    index = {name: k for k, name in enumerate(names)}
    return np.array([index[r] if r is not None else -1 for r in raw], dtype=np.int64), names, warnings


# --------------------------------------------------------------------------- CoOp split JSON


def _split_rows(path: Path, split: str | None, root: Path) -> Rows:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlaInputError(f"split file is not valid JSON ({exc})", path) from exc
    if not isinstance(data, dict):
        raise GlaInputError('split file must hold {"train": [[path, label, classname], ...], ...}', path)
    if split is None:
        raise GlaInputError(f"a split JSON needs --split ({', '.join(k for k in data if isinstance(data[k], list))})",
                            path)
    if not isinstance(data.get(split), list):
        raise GlaInputError(f"has no split {split!r} (it has: {', '.join(sorted(data))})", path)
    names: dict[int, str] = {}
    for name in data:
        for k, item in enumerate(data[name] if isinstance(data[name], list) else []):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], int) and not isinstance(item[1], bool) and item[1] >= 0
                    and isinstance(item[2], str)):
                raise GlaInputError(f"{name}[{k}] is not [path, label, classname]", path)
            if names.setdefault(item[1], item[2]) != item[2]:
                raise GlaInputError(f"label {item[1]} is named both {names[item[1]]!r} and {item[2]!r}", path)
    n_classes = max(names) + 1
    if len(names) != n_classes:
        missing = min(set(range(n_classes)) - set(names))
        raise GlaInputError(f"label {missing} never appears, so its class has no name", path)
    classnames = [names[k].replace("_", " ") for k in range(n_classes)]
    _check_unique(classnames, path)
    items = data[split]
    ids = [item[0] for item in items]
    base = root.resolve()
    return Rows([os.path.join(base, p) for p in ids], ids, np.array([item[1] for item in items], np.int64),
                classnames, "split", {"source": str(path.resolve()), "source_kind": "split", "split": split,
                                      "root": str(base)})


# --------------------------------------------------------------------------- tar shards


def _is_tar_source(source: str) -> bool:
    return source.endswith(".tar") or any(ch in source for ch in "*?[")


def _tar_rows(pattern: str, given_names: list[str] | None) -> Rows:
    """Webdataset layout: entries ``KEY.jpg`` (any image extension) and ``KEY.cls`` (an integer label)."""
    shards = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
    if not shards:
        raise GlaInputError("no tar shards match this pattern", pattern)
    base = Path(os.path.commonpath([os.path.abspath(s) for s in shards]))
    if len(shards) == 1:
        base = base.parent
    locators: list[Locator] = []
    ids: list[str] = []
    raw_labels: list[str | None] = []
    for shard in shards:
        images, classes = _scan_shard(shard)
        shard_id = Path(os.path.abspath(shard)).relative_to(base).as_posix()
        for key, (name, member) in images.items():
            locators.append(member)
            ids.append(f"{shard_id}/{name}")
            raw_labels.append(classes.get(key))
    bad = next((r for r in raw_labels if r is not None and not _INTEGER.match(r)), None)
    if bad is not None:
        raise GlaInputError(f".cls entries must hold integer labels, found {bad[:40]!r}", pattern)
    labels, classnames, warnings = _resolve_labels(raw_labels, given_names, pattern)
    return Rows(locators, ids, labels, classnames, "tar",
                {"source": os.path.abspath(pattern), "source_kind": "tar", "shards": len(shards)}, warnings)


def _scan_shard(shard: str) -> tuple[dict[str, tuple[str, TarMember]], dict[str, str]]:
    images: dict[str, tuple[str, TarMember]] = {}
    classes: dict[str, str] = {}
    path = os.path.abspath(shard)
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, _, filename = member.name.rpartition("/")
                stem, dot, extension = filename.partition(".")
                key = f"{directory}/{stem}" if directory else stem
                extension = f".{extension.lower()}" if dot else ""
                if extension in IMAGE_EXTENSIONS:
                    images.setdefault(key, (member.name, TarMember(path, member.offset_data, member.size)))
                elif extension == ".cls":
                    data = tar.extractfile(member)
                    classes[key] = (data.read() if data else b"").decode("utf-8", "replace").strip()
    except FileNotFoundError:
        raise GlaInputError("no such file", shard) from None
    except (tarfile.TarError, OSError) as exc:
        raise GlaInputError(f"not an uncompressed tar shard ({exc})", shard) from exc
    return images, classes


def _check_unique(classnames: list[str], where: Path | str) -> None:
    seen: set[str] = set()
    for name in classnames:
        if name in seen:
            raise GlaInputError(f"two classes are both named {name!r}", where)
        seen.add(name)

