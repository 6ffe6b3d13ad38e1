"""ImageNet's distribution-shift sets in their published layouts, labelled in ImageNet's 1000 classes.

    imagenet-v2:PATH      ImageNet-V2: class-index folders 0 .. 999
    imagenet-sketch:PATH  ImageNet-Sketch: wnid folders (1000 classes)
    imagenet-r:PATH       ImageNet-R: wnid folders (200 classes)
    imagenet-a:PATH       ImageNet-A: wnid folders (200 classes)
    objectnet:PATH        ObjectNet: PATH/images/<folder>/ and PATH/mappings/*.json; the images of its
                          113 classes that overlap ImageNet, each labelled with the first of its ImageNet
                          classes, with a 2-pixel border cropped off (WiSE-FT's loader)

A label is the class's index among ImageNet's sorted wnids, and the class names are ImageNet's
1000 (``--classnames``/``--imagenet-classes``, by default CLIP's names), so the zero-shot head, q
and a fine-tuned head of ImageNet apply unchanged; ``gla project`` then restricts the logits to a
set's classes (:mod:`glacli.core.projection`).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Rows
from glacli.io.imagenet_classes import N_IMAGENET_CLASSES, imagenet_wnids, read_objectnet_mapping, subset_indices
from glacli.io.sources.base import IMAGE_EXTENSIONS, Layout, Request

SHIFTS = ("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet")
OBJECTNET_BORDER = 2
"""Pixels cropped from each side of an ObjectNet image: WiSE-FT's ``crop`` (``(2, 2, w - 2, h - 2)``)
removes the red frame ObjectNet's images carry."""


@dataclass(frozen=True)
class CroppedImage:
    """A locator: an image file whose ``border`` outer pixels are cropped off; it reads itself (as a
    lossless BMP of the cropped pixels) in the DataLoader workers."""

    path: str
    border: int

    def read_bytes(self) -> bytes:
        from PIL import Image
        with Image.open(self.path) as image:
            image = image.convert("RGB")
            width, height = image.size
            cropped = image.crop((self.border, self.border, width - self.border, height - self.border))
        out = io.BytesIO()
        cropped.save(out, format="BMP")
        return out.getvalue()


def split_source(source: str) -> tuple[str, Path]:
    name, _, path = source.partition(":")
    return name, Path(path)


def list_rows(request: Request) -> Rows:
    name, root = split_source(request.source)
    if not root.is_dir():
        raise GlaInputError(f"{name}: no such folder", root)
    classnames = request.classnames if request.classnames is not None else _clip_imagenet_classnames()
    if len(classnames) != N_IMAGENET_CLASSES:
        raise GlaInputError(f"--classnames names {len(classnames)} classes; {name} is labelled in ImageNet's "
                            f"{N_IMAGENET_CLASSES}", request.source)
    warnings: list[str] = []
    if name == "objectnet":
        mapping = read_objectnet_mapping(root / "mappings")
        images = root / "images"
        if not images.is_dir():
            raise GlaInputError("objectnet: no images/ folder", root)
        labels_of = mapping.label_of_folder()
        folders = _class_dirs(images)
        left_out = [d.name for d in folders if d.name not in labels_of]
        if left_out:
            warnings.append(f"{len(left_out)} ObjectNet folders of classes outside ImageNet left out "
                            f"(e.g. {left_out[0]!r})")
        ids, labels, paths = _files(images, [(d, labels_of[d.name]) for d in folders if d.name in labels_of])
        ids = [f"images/{i}" for i in ids]
        locators: list = [CroppedImage(p, OBJECTNET_BORDER) for p in paths]
    else:
        ids, labels, paths = _files(root, [(d, _label_of(name, d, root)) for d in _class_dirs(root)])
        locators = paths
    if not ids:
        raise GlaInputError(f"{name}: lists no images", root)
    attrs = {"source": str(root.resolve()), "source_kind": name, "label_space": "imagenet-1k"}
    if name == "objectnet":
        attrs["border_cropped"] = OBJECTNET_BORDER
    return Rows(locators, ids, np.asarray(labels, np.int64), list(classnames), name, attrs, warnings)


def _clip_imagenet_classnames() -> list[str]:
    from glacli.io.sources.torchvision_datasets import clip_imagenet_classnames
    return clip_imagenet_classnames()


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


_WNID_INDEX: dict[str, int] = {}


def _label_of(name: str, folder: Path, root: Path) -> int:
    """The ImageNet index of a class folder of ``name``'s layout; a folder that cannot be one is refused."""
    if name == "imagenet-v2":
        if not folder.name.isdigit() or int(folder.name) >= N_IMAGENET_CLASSES:
            raise GlaInputError(f"imagenet-v2: folder {folder.name!r} is not a class index 0 .. 999", root)
        return int(folder.name)
    if not _WNID_INDEX:
        _WNID_INDEX.update({wnid: k for k, wnid in enumerate(imagenet_wnids())})
    if folder.name not in _WNID_INDEX:
        raise GlaInputError(f"{name}: folder {folder.name!r} is not an ImageNet wnid", root)
    label = _WNID_INDEX[folder.name]
    if name in ("imagenet-r", "imagenet-a") and label not in set(subset_indices(name).tolist()):
        raise GlaInputError(f"{name}: folder {folder.name!r} is not one of its 200 classes", root)
    return label


def _files(root: Path, classes: list[tuple[Path, int]]) -> tuple[list[str], list[int], list[str]]:
    """Image files below each class folder (any depth): ids relative to ``root``, labels and absolute
    paths, sorted by id."""
    found: list[tuple[str, int]] = []
    for class_dir, label in classes:
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(root)
            found += [((rel / f).as_posix(), label) for f in filenames
                      if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    found.sort()
    base = str(root.resolve())
    return [i for i, _ in found], [label for _, label in found], [os.path.join(base, i) for i, _ in found]


LAYOUT = Layout(
    name="ImageNet shift sources",
    help="imagenet-v2:PATH, imagenet-sketch:PATH, imagenet-r:PATH, imagenet-a:PATH or objectnet:PATH, an "
         "ImageNet distribution-shift set labelled in ImageNet's 1000 classes (--imagenet-classes names them)",
    claims=lambda source: source.split(":", 1)[0] in SHIFTS and ":" in source, list_rows=list_rows,
    options=frozenset({"--classnames"}), input_kinds=("image",), is_path=False)
