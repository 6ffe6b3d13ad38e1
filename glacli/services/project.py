"""``project``: a logits file over ImageNet's 1000 classes restricted to a shift set's classes, or merged
into ObjectNet's (the maximum over each ObjectNet class's ImageNet classes); labels mapped along.

The rules are :mod:`glacli.core.projection`'s; what the classes are comes from the shipped lists
(:mod:`glacli.io.imagenet_classes`), from ObjectNet's own ``mappings/`` folder, or from a file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base import chunking
from glacli.base.errors import GlaInputError
from glacli.base.types import Reporter
from glacli.core.projection import group_layout, project_labels, project_logits
from glacli.io.formats.classnames import read_classnames
from glacli.io.h5file import PROVENANCE_ATTRS
from glacli.io.imagenet_classes import N_IMAGENET_CLASSES, SUBSETS, read_objectnet_mapping, subset_indices
from glacli.io.outputs import check_output_path
from glacli.io.rowfile import read_rows, write_rows

NAMED_TARGETS = (*SUBSETS, "objectnet")
"""``--onto`` names; anything else is a file of classes."""


def project_file(source: Path, onto: str, output: Path, *, mappings: Path | None = None,
                 reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Write ``source``'s logits projected onto ``onto`` (a :data:`NAMED_TARGETS` name or a file) into
    ``output``; returns the summary of ``gla project --json``."""
    if onto == "objectnet" and mappings is None:
        raise GlaInputError("--onto objectnet needs --mappings: ObjectNet's mappings/ folder")
    if onto != "objectnet" and mappings is not None:
        raise GlaInputError("--mappings applies with --onto objectnet only")
    check_output_path(output)
    with read_rows(source, "logits") as rows:
        if "projected_onto" in rows.attrs:
            raise GlaInputError(f"already projected onto {rows.attrs['projected_onto']}; project the "
                                f"{N_IMAGENET_CLASSES}-class logits", source)
        names, groups = _target(onto, mappings, rows.classnames, rows.path)
        try:
            order, starts, class_map = group_layout(groups, rows.n_classes)
        except ValueError as exc:
            raise GlaInputError(f"--onto {onto}: {exc}") from None
        labels = project_labels(rows.labels, class_map)
        outside = (rows.labels >= 0) & (labels < 0)
        if outside.any():
            k = int(np.argmax(outside))
            raise GlaInputError(f"row {k} is labelled {rows.classnames[rows.labels[k]]!r}, a class outside "
                                f"{onto}'s (is this file of that set?)", source)
        attrs = {k: v for k, v in rows.attrs.items() if k not in PROVENANCE_ATTRS}
        attrs.update(projected_onto=onto, projected_from_classes=rows.n_classes,
                     projection="max over groups" if len(starts) < len(order) else "subset")
        step = chunking.compute_rows(4 * (rows.n_classes + len(names)))
        with write_rows(output, "logits", n_rows=rows.n_rows, n_cols=len(names), classnames=names,
                        attrs=attrs, parents=[rows.gla_id]) as sink:
            reporter.start("project", rows.n_rows)
            for chunk in rows.iter_chunks(step, with_ids=True):
                sink.write(chunk.start, project_logits(chunk.values, order, starts), labels[chunk.start:chunk.stop],
                           chunk.ids)
                reporter.advance(chunk.stop - chunk.start)
        return {"output": str(output), "n_rows": rows.n_rows, "n_classes": len(names),
                "from_classes": rows.n_classes, "onto": onto}


def _target(onto: str, mappings: Path | None, classnames: list[str], path: str) -> tuple[list[str], list[np.ndarray]]:
    """(class names of the projection, the source classes of each)."""
    if onto in NAMED_TARGETS:
        if len(classnames) != N_IMAGENET_CLASSES:
            raise GlaInputError(f"has {len(classnames)} classes; --onto {onto} projects ImageNet's "
                                f"{N_IMAGENET_CLASSES}", path)
        if onto == "objectnet":
            mapping = read_objectnet_mapping(mappings)
            return mapping.names, mapping.groups
        indices = subset_indices(onto)
        return [classnames[i] for i in indices], [np.array([i]) for i in indices]
    file = Path(onto)
    if not file.is_file():
        raise GlaInputError(f"--onto: neither {', '.join(NAMED_TARGETS)} nor an existing file", onto)
    index = {name: k for k, name in enumerate(classnames)}
    if file.suffix.lower() == ".json" and file.read_text(encoding="utf-8").lstrip().startswith("{"):
        try:
            spec = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise GlaInputError(f"not valid JSON ({exc})", file) from None
        names, groups = [], []
        for name, members in spec.items():
            members = members if isinstance(members, list) else [members]
            groups.append(np.array([_class_index(m, index, len(classnames), file) for m in members], dtype=np.int64))
            names.append(str(name))
        return names, groups
    names = read_classnames(file)
    return names, [np.array([_class_index(n, index, len(classnames), file)]) for n in names]


def _class_index(member: Any, index: dict[str, int], n_classes: int, file: Path) -> int:
    """A class of the logits file named in ``--onto FILE``: by name, or by index (an integer)."""
    if isinstance(member, int) and not isinstance(member, bool):
        if not 0 <= member < n_classes:
            raise GlaInputError(f"class index {member} is outside 0 .. {n_classes - 1}", file)
        return member
    if member not in index:
        raise GlaInputError(f"class {member!r} is not one of the logits file's classes", file)
    return index[member]
