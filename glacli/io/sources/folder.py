"""Class folders: one sub-folder per class, its image (or ``.txt``) files below it at any depth.

Class names are the folder names with ``_`` as spaces, or line k of ``--classnames`` for the k-th
sub-folder (e.g. ImageNet's wnid folders). Ids are paths relative to the folder, sorted.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Rows
from glacli.base.validation import require_unique
from glacli.io.sources.base import FOLDER_EXTENSIONS, Layout, Request


def list_rows(request: Request) -> Rows:
    """Files below each class folder with an extension of the encoder's input kind, sorted.

    A folder with no such files but files of another kind lists those instead, so that
    :func:`glacli.io.sources.open_source` can say which kind the folder holds.
    """
    root, input_kind = request.path, request.input_kind
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
    if request.classnames is not None:
        if len(request.classnames) != len(classnames):
            raise GlaInputError(f"--classnames names {len(request.classnames)} classes, but the folder has "
                                f"{len(classnames)} class sub-folders", root)
        classnames = request.classnames
    return Rows([os.path.join(base, i) for i in ids], ids, np.asarray(labels, np.int64)[order], classnames,
                "folder", {"source": base, "source_kind": "folder"}, input_kind=listed)


LAYOUT = Layout(
    name="folders", help="a folder with one sub-folder per class (image files, or .txt files for text encoders)",
    claims=lambda source: Path(source).is_dir(), list_rows=list_rows, options=frozenset({"--classnames"}))
