"""ImageNet's class lists as data, and ObjectNet's mapping onto them (read from the dataset's own files).

Every ImageNet distribution-shift set is labelled in ImageNet's 1000-class index space: class k is
the k-th of the sorted wnids (:func:`imagenet_wnids`). ImageNet-R and ImageNet-A cover 200 of
those classes each (:func:`subset_indices`); each of ObjectNet's 113 ImageNet-overlapping classes
stands for one or more ImageNet classes (:func:`read_objectnet_mapping`). Where the lists come from:
SOURCES.md in this folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from glacli.base.errors import GlaInputError

N_IMAGENET_CLASSES = 1000
SUBSETS = ("imagenet-r", "imagenet-a")
"""The 200-class subsets shipped here (``<name>.txt``: their ImageNet indices)."""
OBJECTNET_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                   "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")
"""The files of ObjectNet's ``mappings/`` folder that map its classes onto ImageNet's."""

_FOLDER = resources.files("glacli.io.imagenet_classes")


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet wnids, sorted: line k is class k."""
    return (_FOLDER / "wnids.txt").read_text(encoding="utf-8").split()


def subset_indices(name: str) -> np.ndarray:
    """The sorted ImageNet indices of ImageNet-R's or ImageNet-A's 200 classes."""
    if name not in SUBSETS:
        raise ValueError(f"unknown subset {name!r}")
    return np.array((_FOLDER / f"{name}.txt").read_text(encoding="utf-8").split(), dtype=np.int64)


@dataclass(frozen=True)
class ObjectNetMapping:
    """ObjectNet's classes that overlap ImageNet, ordered by folder name (as WiSE-FT orders them)."""

    folders: list[str]
    """The image folder of each class (``images/<folder>/``)."""
    names: list[str]
    """Its ObjectNet label (``Alarm clock``)."""
    groups: list[np.ndarray]
    """The ImageNet indices each class stands for (sorted; ``analog clock`` and ``digital clock``)."""

    def label_of_folder(self) -> dict[str, int]:
        """Folder -> the ImageNet index that labels its images (the smallest of its group)."""
        return {folder: int(group[0]) for folder, group in zip(self.folders, self.groups)}


def read_objectnet_mapping(mappings: str | Path) -> ObjectNetMapping:
    """Read ObjectNet's ``mappings/`` folder (the files of :data:`OBJECTNET_FILES`).

    ``objectnet_to_imagenet_1k.json`` names the ImageNet classes of each ObjectNet class (``; ``
    between them) by their line in ``imagenet_to_label_2012_v2``, an id that
    ``pytorch_to_imagenet_2012_id.json`` turns into ImageNet's sorted-wnid index.
    """
    folder = Path(mappings)
    for name in OBJECTNET_FILES:
        if not (folder / name).is_file():
            raise GlaInputError(f"ObjectNet mappings: no {name} (the mappings/ folder of ObjectNet holds it)",
                                folder)
    try:
        folder_labels = _json(folder / OBJECTNET_FILES[0])
        to_imagenet = _json(folder / OBJECTNET_FILES[1])
        index_of_id = {int(v): int(k) for k, v in _json(folder / OBJECTNET_FILES[2]).items()}
        lines = (folder / OBJECTNET_FILES[3]).read_text(encoding="utf-8").splitlines()
        index_of_name = {line.strip(): index_of_id[k] for k, line in enumerate(lines) if line.strip()}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise GlaInputError(f"ObjectNet mappings do not fit together ({exc})", folder) from None
    folder_of_label = {label: f for f, label in folder_labels.items()}
    classes = []
    for label, imagenet_names in to_imagenet.items():
        if label not in folder_of_label:
            raise GlaInputError(f"ObjectNet class {label!r} has no folder in {OBJECTNET_FILES[0]}", folder)
        unknown = [n for n in imagenet_names.split("; ") if n not in index_of_name]
        if unknown:
            raise GlaInputError(f"ImageNet class {unknown[0]!r} of ObjectNet class {label!r} is not in "
                                f"{OBJECTNET_FILES[3]}", folder)
        group = np.array(sorted(index_of_name[n] for n in imagenet_names.split("; ")), dtype=np.int64)
        classes.append((folder_of_label[label], label, group))
    classes.sort(key=lambda c: c[0])
    covered = np.concatenate([c[2] for c in classes]) if classes else np.empty(0, np.int64)
    if len(np.unique(covered)) != len(covered):
        raise GlaInputError("an ImageNet class belongs to two ObjectNet classes", folder)
    return ObjectNetMapping([c[0] for c in classes], [c[1] for c in classes], [c[2] for c in classes])


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlaInputError(f"not valid JSON ({exc})", path) from None
    if not isinstance(value, dict):
        raise GlaInputError("expected a JSON object", path)
    return value
