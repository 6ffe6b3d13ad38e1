"""torchvision classification datasets as sources of ``gla extract`` (``torchvision:CIFAR100``).

A network-enabled machine needs no prepared folder: ``--download`` lets torchvision fetch the
data into ``--root``. Listing reads only labels and class names; images are read later, in the
DataLoader workers, through :class:`DatasetItem` locators: each worker opens the dataset once
(lazily, cached per process). Datasets stored as image files hand the pipeline the file's bytes
(decoded as an image folder's would be, on the GPU too with ``--gpu-decode``); datasets held in
arrays (CIFAR, MNIST, SVHN, STL10) hand it the item as lossless PNG bytes. Either way the encoder
sees exactly the pixels torchvision returns.

Row ids are ``<Dataset>/<split>/<index>`` (``all`` for datasets without splits): stable for a
given copy of the data, and recorded with the rows digest so a resumed run is the same listing.
Class names come from the dataset (``_`` shown as a space), with the names CLIP-style benchmarks
use where torchvision's are codes or folder names (see :data:`DATASETS`).
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.errors import GlaInputError, one_line
from glacli.base.types import Rows
from glacli.io.sources.base import Layout, Request

PREFIX = "torchvision:"
NO_SPLIT = "all"
"""The split name in the ids of datasets that torchvision does not split."""

EUROSAT_NAMES = {
    "AnnualCrop": "annual crop land", "Forest": "forest", "HerbaceousVegetation": "herbaceous vegetation land",
    "Highway": "highway or road", "Industrial": "industrial buildings", "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land", "Residential": "residential buildings", "River": "river",
    "SeaLake": "sea or lake",
}
"""EuroSAT's folder names as the CoOp benchmarks name them in prompts."""

CALTECH_NAMES = {"Faces": "face", "Faces_easy": "face easy", "Leopards": "leopard", "Motorbikes": "motorbike",
                 "airplanes": "airplane"}
"""Caltech101's plural or capitalised folder names as the CoOp benchmarks name them."""


@dataclass(frozen=True)
class TvDataset:
    """How to list one torchvision dataset: constructor keywords per split, where labels and names live."""

    name: str
    splits: dict[str, dict[str, Any]]
    """``--split`` value -> constructor keywords; empty when the dataset has no splits."""
    labels: Callable[[Any], Sequence[int]]
    classnames: Callable[[Any], list[str]]
    default_split: str | None = None
    files: Callable[[Any], Sequence[Any]] | None = None
    """The image file of each item, for datasets stored as files (read as bytes, not re-encoded)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Constructor keywords used for every split."""


def _attr(name: str) -> Callable[[Any], Any]:
    return lambda dataset: getattr(dataset, name)


def _samples_labels(dataset: Any) -> list[int]:
    return [label for _, label in dataset._samples]


def _sample_files(attribute: str) -> Callable[[Any], list[str]]:
    return lambda dataset: [path for path, _ in getattr(dataset, attribute)]


def _caltech_files(dataset: Any) -> list[str]:
    folder = Path(dataset.root) / "101_ObjectCategories"
    return [str(folder / dataset.categories[y] / f"image_{k:04d}.jpg") for y, k in zip(dataset.y, dataset.index)]


def _clean(names: Sequence[str]) -> list[str]:
    return [str(n).replace("_", " ").strip() for n in names]


def _mapped(mapping: dict[str, str], attribute: str) -> Callable[[Any], list[str]]:
    return lambda dataset: _clean([mapping.get(n, n) for n in getattr(dataset, attribute)])


def _cleaned(attribute: str) -> Callable[[Any], list[str]]:
    return lambda dataset: _clean(getattr(dataset, attribute))


def _digits(dataset: Any) -> list[str]:
    return [str(k) for k in range(10)]


CLIP_IMAGENET_RENAMES = {744: "projectile", 836: "sunglass"}
"""CLIP's list names two pairs of classes alike ('missile', 'sunglasses'); class names must be
unique, so one of each pair takes its first WordNet lemma (n04008634, n04355933)."""


def clip_imagenet_classnames() -> list[str]:
    """CLIP's curated names of the 1000 ImageNet classes (as open_clip ships them), in sorted-wnid
    order (the order of an ImageNet image folder and of torchvision's ImageNet), made unique."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    return [CLIP_IMAGENET_RENAMES.get(k, name) for k, name in enumerate(IMAGENET_CLASSNAMES)]


def _imagenet_names(dataset: Any) -> list[str]:
    names = clip_imagenet_classnames()
    return names if len(dataset.classes) == len(names) else [synonyms[0] for synonyms in dataset.classes]


def _numbered(dataset: Any) -> list[str]:
    return [str(k) for k in range(int(max(_samples_labels(dataset))) + 1)]


_TRAIN_TEST_FLAG = {"train": {"train": True}, "test": {"train": False}}


def _split_kw(*names: str) -> dict[str, dict[str, Any]]:
    return {name: {"split": name} for name in names}


DATASETS: dict[str, TvDataset] = {d.name.lower(): d for d in [
    TvDataset("CIFAR10", _TRAIN_TEST_FLAG, _attr("targets"), _cleaned("classes"), "test"),
    TvDataset("CIFAR100", _TRAIN_TEST_FLAG, _attr("targets"), _cleaned("classes"), "test"),
    TvDataset("MNIST", _TRAIN_TEST_FLAG, lambda d: d.targets.tolist(), _digits, "test"),
    TvDataset("SVHN", _split_kw("train", "test", "extra"), _attr("labels"), _digits, "test"),
    TvDataset("STL10", _split_kw("train", "test"), _attr("labels"), _cleaned("classes"), "test"),
    TvDataset("Food101", _split_kw("train", "test"), _attr("_labels"), _cleaned("classes"), "test",
              _attr("_image_files")),
    TvDataset("Flowers102", _split_kw("train", "val", "test"), _attr("_labels"), _cleaned("classes"), "test",
              _attr("_image_files")),
    TvDataset("OxfordIIITPet", _split_kw("trainval", "test"), _attr("_labels"), _cleaned("classes"), "test",
              _attr("_images")),
    TvDataset("DTD", _split_kw("train", "val", "test"), _attr("_labels"), _cleaned("classes"), "test",
              _attr("_image_files")),
    TvDataset("FGVCAircraft", _split_kw("train", "val", "trainval", "test"), _attr("_labels"),
              _cleaned("classes"), "test", _attr("_image_files")),
    TvDataset("StanfordCars", _split_kw("train", "test"), _samples_labels, _cleaned("classes"), "test",
              _sample_files("_samples")),
    TvDataset("Country211", _split_kw("train", "valid", "test"), _attr("targets"), _cleaned("classes"), "test",
              _sample_files("samples")),
    TvDataset("GTSRB", _split_kw("train", "test"), _samples_labels, _numbered, "test", _sample_files("_samples")),
    TvDataset("ImageNet", _split_kw("train", "val"), _attr("targets"), _imagenet_names, "val",
              _sample_files("samples")),
    TvDataset("EuroSAT", {}, _attr("targets"), _mapped(EUROSAT_NAMES, "classes"), files=_sample_files("samples")),
    TvDataset("SUN397", {}, _attr("_labels"), _cleaned("classes"), files=_attr("_image_files")),
    TvDataset("Caltech101", {}, _attr("y"), _mapped(CALTECH_NAMES, "categories"), files=_caltech_files,
              fixed={"target_type": "category"}),
]}
"""The supported datasets, by lower-case torchvision class name."""

CODES_NOT_NAMES = {"Country211": "ISO country codes", "GTSRB": "class numbers"}
"""Datasets whose classes have no readable names in torchvision: ``--classnames`` should name them."""


@dataclass(frozen=True)
class DatasetKey:
    """Everything needed to construct the same dataset object again, in any process."""

    name: str
    split: str | None
    root: str
    download: bool = False

    def open(self) -> Any:
        """The torchvision dataset (no transforms), constructed at most once per process."""
        return self._opened()[0]

    def file(self, index: int) -> str | None:
        """The image file of item ``index``, or None for a dataset held in arrays."""
        files = self._opened()[1]
        return None if files is None else str(files[index])

    def _opened(self) -> tuple[Any, Sequence[Any] | None]:
        if self not in _OPENED:
            dataset = _construct(self)
            files = DATASETS[self.name.lower()].files
            _OPENED[self] = (dataset, None if files is None else files(dataset))
        return _OPENED[self]


_OPENED: dict[DatasetKey, tuple[Any, Sequence[Any] | None]] = {}
"""Datasets constructed in this process, with their image files (DataLoader workers inherit or rebuild them)."""


@dataclass(frozen=True)
class DatasetItem:
    """A locator: item ``index`` of a torchvision dataset; it reads itself (:func:`glacli.io.sources.read_bytes`)."""

    dataset: DatasetKey
    index: int

    def read_bytes(self) -> bytes:
        """The item's image file, or for array datasets the item as PNG (lossless, uncompressed)."""
        from PIL import Image

        path = self.dataset.file(self.index)
        if path is not None:
            with open(path, "rb") as f:
                return f.read()
        image, _ = self.dataset.open()[self.index]
        if not isinstance(image, Image.Image):
            raise OSError(f"item {self.index} is a {type(image).__name__}, not an image")
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=0)
        return buffer.getvalue()


def list_rows(request: Request) -> Rows:
    """List a ``torchvision:NAME`` source: one row per item, labels and class names from the dataset."""
    source = request.source
    spec = _spec(source)
    if request.root is None:
        raise GlaInputError("a torchvision source needs --root: the folder that holds (or will hold, with "
                            "--download) the dataset", source)
    split = _check_split(spec, request.split, source)
    key = DatasetKey(spec.name, split, str(Path(request.root).expanduser().resolve()), request.download)
    dataset = key.open()
    labels = np.asarray(spec.labels(dataset), dtype=np.int64)
    classnames = spec.classnames(dataset)
    attrs: dict[str, Any] = {"source": f"{PREFIX}{spec.name}", "source_kind": "torchvision", "split": split,
                             "root": key.root}
    warnings: list[str] = []
    if request.classnames is not None:
        if len(request.classnames) != len(classnames):
            raise GlaInputError(f"--classnames names {len(request.classnames)} classes, but {spec.name} has "
                                f"{len(classnames)}", source)
        classnames = request.classnames
    elif spec.name in CODES_NOT_NAMES:
        warnings.append(f"torchvision's {spec.name} classes are {CODES_NOT_NAMES[spec.name]}; "
                        "give --classnames to name them in prompts")
    if not len(labels):
        raise GlaInputError(f"the {split or NO_SPLIT} split lists no images", source)
    ids = [f"{spec.name}/{split or NO_SPLIT}/{k}" for k in range(len(labels))]
    return Rows([DatasetItem(key, k) for k in range(len(labels))], ids, labels, classnames, "torchvision",
                attrs, warnings)


def _spec(source: str) -> TvDataset:
    name = source[len(PREFIX):]
    spec = DATASETS.get(name.lower())
    if spec is None:
        known = ", ".join(d.name for d in DATASETS.values())
        raise GlaInputError(f"unknown torchvision dataset {name!r} (supported: {known})", source)
    return spec


def _check_split(spec: TvDataset, split: str | None, source: str) -> str | None:
    if not spec.splits:
        if split is not None:
            raise GlaInputError(f"torchvision's {spec.name} has no splits; leave out --split", source)
        return None
    split = split or spec.default_split
    if split not in spec.splits:
        raise GlaInputError(f"--split {split!r}: {spec.name} has {', '.join(spec.splits)}", source)
    return split


def _construct(key: DatasetKey) -> Any:
    import torchvision.datasets

    spec = DATASETS[key.name.lower()]
    kwargs = {**spec.fixed, **(spec.splits[key.split] if key.split else {})}
    where = f"{PREFIX}{key.name}"
    try:
        dataset = getattr(torchvision.datasets, spec.name)(key.root, download=key.download, **kwargs)
    except RuntimeError as exc:
        hint = "" if key.download else "; add --download to fetch it"
        raise GlaInputError(f"torchvision cannot open it under {key.root} ({one_line(exc)}){hint}", where) from exc
    except (OSError, ValueError) as exc:  # network errors are OSErrors (URLError)
        raise GlaInputError(f"torchvision cannot open or download it into {key.root} ({one_line(exc)})",
                            where) from exc
    if spec.name == "SUN397":  # torchvision lists files in file-system order: sort them, so ids are stable
        order = sorted(range(len(dataset._image_files)), key=lambda k: str(dataset._image_files[k]))
        dataset._image_files = [dataset._image_files[k] for k in order]
        dataset._labels = [dataset._labels[k] for k in order]
    return dataset


LAYOUT = Layout(
    name="torchvision: sources",
    help=f"{PREFIX}NAME, a torchvision dataset ({', '.join(d.name for d in DATASETS.values())}; with --root, "
         "--split and --download)",
    claims=lambda source: source.startswith(PREFIX), list_rows=list_rows,
    options=frozenset({"--split", "--root", "--classnames", "--download"}), input_kinds=("image",), is_path=False)
