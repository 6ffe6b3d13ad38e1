"""Data sources of ``gla extract`` -> rows: what to read (a locator), a sample id and a label.

Listing is pure: nothing here decodes an image. Supported layouts (see docs/extract.md):

- an image-folder tree, one sub-folder per class (class names: folder names, ``_`` as spaces);
- a manifest: ``.csv``/``.tsv`` with a ``path`` column (and optionally ``label``), or ``.txt``
  lines ``path label`` (ImageNet-LT, Places-LT);
- a CoOp-style split JSON ``{"train": [[path, label, classname], ...], ...}`` with a split name;
- webdataset-style ``.tar`` shards (a path or a glob): image entries with ``.cls`` label entries.

Text encoders read texts instead (``input_kind="text"``): a text-folder tree (one sub-folder per
class, ``.txt`` files; the same rules as image folders), or a ``.csv``/``.tsv`` manifest whose
``text`` column holds the texts themselves (plus ``label`` and an optional ``id``).

Rows keep a deterministic order (folders: sorted relative path; manifests and shards: file order).
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glacli.classnames import read_classnames, require_unique
from glacli.errors import GlaInputError
from glacli.subset import NotEnoughRows, few_shot_split, shot_keys

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
TEXT_EXTENSIONS = frozenset({".txt"})
FOLDER_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "text": TEXT_EXTENSIONS}
"""Input kind -> the file extensions a class folder of that kind lists."""
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt")
_INTEGER = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class TarMember:
    """One entry of an uncompressed tar shard, read by offset so workers need no tar index."""

    shard: str
    offset: int
    size: int


@dataclass(frozen=True)
class InlineText:
    """A row whose text is written in the manifest itself, not in a file."""

    text: str


Locator = str | TarMember | InlineText
"""What a loader reads for one row: an absolute file path, a tar member or an inline text."""


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
        """A fingerprint of ids, labels and classes (and inline texts, whose ids may be bare row
        numbers): two listings with the same digest are the same rows."""
        h = hashlib.sha256()
        h.update("\n".join([*self.classnames, "\0", *self.ids]).encode("utf-8"))
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        for locator in self.locators:
            if isinstance(locator, InlineText):
                h.update(hashlib.sha256(locator.text.encode("utf-8", errors="replace")).digest())
        return h.hexdigest()


def open_source(source: str, *, split: str | None = None, root: str | None = None,
                classnames_file: str | None = None, input_kind: str = "image", download: bool = False) -> Rows:
    """List the rows of ``source`` (folder, manifest, split JSON, tar shards/glob, or ``torchvision:NAME``).

    ``input_kind`` is what the encoder reads (``"image"`` or ``"text"``): it picks which files a
    class folder lists and which column a manifest reads; a source of the other kind is refused.
    """
    if input_kind not in FOLDER_EXTENSIONS:
        raise ValueError(f"input_kind must be one of {sorted(FOLDER_EXTENSIONS)}, got {input_kind!r}")
    if source.startswith("torchvision:"):  # torchvision datasets: glacli/tv_sources.py
        from glacli.tv_sources import torchvision_rows
        return torchvision_rows(source, split=split, root=root, classnames_file=classnames_file,
                                download=download, input_kind=input_kind)
    if download:
        raise GlaInputError("--download applies to torchvision: sources only", source)
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
        rows = _folder_rows(path, input_kind)
        if given_names is not None:  # line k names the k-th sub-folder (e.g. ImageNet's wnid folders)
            if len(given_names) != len(rows.classnames):
                raise GlaInputError(f"--classnames names {len(given_names)} classes, but the folder has "
                                    f"{len(rows.classnames)} class sub-folders", source)
            rows.classnames = given_names
    elif path.suffix in MANIFEST_SUFFIXES and input_kind == "text":
        if root is not None:
            raise GlaInputError("--root does not apply to a text manifest (it holds the texts)", source)
        rows = _text_manifest_rows(path, given_names)
    elif path.suffix in MANIFEST_SUFFIXES:
        rows = _manifest_rows(path, Path(root) if root else path.parent, given_names)
    elif path.suffix == ".json":
        if given_names is not None:
            raise GlaInputError("--classnames does not apply to a split JSON (it names its classes)", source)
        rows = _split_rows(path, split, Path(root) if root else path.parent)
    else:
        raise GlaInputError("unrecognised source: expected an image folder, a .csv/.tsv/.txt manifest, "
                            "a split .json or .tar shards", source)
    if rows.input_kind != input_kind:
        raise GlaInputError(f"this source lists {rows.input_kind}s, but the encoder reads {input_kind}s", source)
    if not len(rows):
        raise GlaInputError(f"source lists no {input_kind}s", source)
    if classnames_file:
        rows.attrs["classnames_file"] = str(Path(classnames_file).resolve())
    return rows


def select_shots(rows: Rows, shots: int, seed: int, allow_fewer: bool = False) -> Rows:
    """``shots`` rows per class, in source order: the training rows of :func:`glacli.subset.few_shot_split`.

    The one sampler of ``gla subset`` (keyed on ids, not positions), so ``extract --shots K --seed S``
    keeps exactly the rows that ``subset --shots K --seed S`` takes from the full extraction. A
    class with fewer rows is refused, or with ``allow_fewer`` keeps all it has (a warning says which).
    """
    if shots < 1:
        raise GlaInputError(f"--shots: expected a positive integer, got {shots}")
    if (rows.labels < 0).any():
        k = int(np.argmax(rows.labels < 0))
        raise GlaInputError(f"--shots needs labels, but row {k} ({rows.ids[k]}) has none", rows.attrs.get("source"))
    try:
        chosen = few_shot_split(rows.labels, shot_keys(rows.ids, seed), len(rows.classnames), shots,
                                allow_fewer=allow_fewer).train
    except NotEnoughRows as exc:
        raise GlaInputError(exc.for_user(rows.classnames), rows.attrs.get("source")) from None
    selected = rows.take(chosen)
    selected.attrs.update(shots=shots, seed=seed)
    counts = np.bincount(rows.labels, minlength=len(rows.classnames))
    short = [rows.classnames[c] for c in np.flatnonzero(counts < shots)]
    if short:
        listed = ", ".join(repr(n) for n in short[:5]) + (" ..." if len(short) > 5 else "")
        selected.warnings.append(f"{len(short)} classes have fewer than {shots} rows and keep all they have: "
                                 f"{listed}")
    return selected


def read_bytes(locator: Locator) -> bytes:
    """The raw bytes of one row (runs in DataLoader workers)."""
    if hasattr(locator, "read_bytes"):  # a locator that reads itself (glacli.tv_sources.DatasetItem)
        return locator.read_bytes()
    if isinstance(locator, InlineText):
        return locator.text.encode("utf-8", errors="replace")
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


def _folder_rows(root: Path, input_kind: str) -> Rows:
    """One sub-folder per class; files below it (any depth) with an extension of ``input_kind``, sorted.

    A folder with no such files but files of another kind lists those instead, so that
    :func:`open_source` can say which kind the folder holds.
    """
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise GlaInputError(f"{input_kind} folder has no class sub-folders", root)
    found: dict[str, tuple[list[str], list[int]]] = {kind: ([], []) for kind in FOLDER_EXTENSIONS}
    for label, class_dir in enumerate(class_dirs):
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(root)
            for name in filenames:
                suffix = Path(name).suffix.lower()
                kind = next((k for k, extensions in FOLDER_EXTENSIONS.items() if suffix in extensions), None)
                if kind is not None and not name.startswith("."):
                    found[kind][0].append((rel_dir / name).as_posix())
                    found[kind][1].append(label)
    listed = input_kind if found[input_kind][0] else next((k for k in found if found[k][0]), input_kind)
    ids, labels = found[listed]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    ids = [ids[i] for i in order]
    base = str(root.resolve())
    classnames = [d.name.replace("_", " ") for d in class_dirs]
    require_unique(classnames, root)
    return Rows([os.path.join(base, i) for i in ids], ids, np.asarray(labels, np.int64)[order], classnames,
                "folder", {"source": base, "source_kind": "folder"}, input_kind=listed)


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


def _text_manifest_rows(path: Path, given_names: list[str] | None) -> Rows:
    """A ``.csv``/``.tsv`` whose ``text`` column holds the texts (quoted cells may span lines),
    with optional ``label`` and ``id`` columns; ids default to the row number (0, 1, ...)."""
    if path.suffix not in (".csv", ".tsv"):
        raise GlaInputError("a text manifest is a .csv or .tsv file with a 'text' column", path)
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GlaInputError(f"manifest is not UTF-8 text ({exc.reason})", path) from exc
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
    labels, classnames, warnings = _resolve_labels(raw_labels, given_names, path)
    return Rows([InlineText(t) for t in texts], ids, labels, classnames, "manifest",
                {"source": str(path.resolve()), "source_kind": "text_manifest"}, warnings, input_kind="text")


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
    require_unique(classnames, path)
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
