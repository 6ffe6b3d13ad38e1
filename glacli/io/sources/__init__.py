"""Data sources of ``gla extract``: SOURCE -> rows (what to read, a sample id and a label per row).

Every layout is a module with a :class:`~glacli.io.sources.base.Layout` entry in :data:`LAYOUTS`,
tried in order (the way open_clip looks up a model name in its registry):

    torchvision_datasets.py  torchvision:NAME (downloaded into --root with --download)
    imagenet_shifts.py       imagenet-v2:, imagenet-sketch:, imagenet-r:, imagenet-a:, objectnet: PATH
    tar.py                   webdataset-style .tar shards (a path or a glob)
    folder.py                one sub-folder per class
    manifest.py              .csv/.tsv/.txt lists of paths (or texts) and labels
    coop_split.py            CoOp split JSON files

A new layout is one module and one line here; ``gla extract --help`` describes the layouts from
the same entries. Listing decodes nothing: images are read later, in DataLoader workers, through
:func:`read_bytes`. Rows keep a deterministic order (folders: sorted relative path; manifests,
shards and datasets: their own order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import InlineText, Locator, Rows, TarMember
from glacli.base.validation import require_count
from glacli.core.subset import NotEnoughRows, few_shot_split, shot_keys
from glacli.io.formats.classnames import read_classnames
from glacli.io.sources import coop_split, folder, imagenet_shifts, manifest, tar, torchvision_datasets
from glacli.io.sources.base import INPUT_KINDS, Layout, Request

LAYOUTS: tuple[Layout, ...] = (torchvision_datasets.LAYOUT, imagenet_shifts.LAYOUT, tar.LAYOUT, folder.LAYOUT,
                               manifest.LAYOUT, coop_split.LAYOUT)
"""The source layouts, in the order they are tried."""


def layout_of(source: str) -> Layout:
    """The first layout that claims ``source``; a missing path or an unknown kind of file is refused."""
    layout = next((layout for layout in LAYOUTS if layout.claims(source)), None)
    if layout is not None:
        return layout
    if not Path(source).exists():
        raise GlaInputError("no such file or folder", source)
    raise GlaInputError("unrecognised source: expected " + "; ".join(layout.help for layout in LAYOUTS), source)


def open_source(source: str, *, split: str | None = None, root: str | None = None,
                classnames_file: str | None = None, input_kind: str = "image", download: bool = False) -> Rows:
    """List the rows of ``source`` in its layout, after refusing options the layout does not take.

    ``input_kind`` is what the encoder reads (``"image"`` or ``"text"``): it picks which files a
    class folder lists and which column a manifest reads; a source of the other kind is refused.
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    layout = layout_of(source)
    given = {"--split": split, "--root": root, "--classnames": classnames_file, "--download": download or None}
    for option, value in given.items():
        if value is not None and option not in layout.options:
            takers = [other.name for other in LAYOUTS if option in other.options]
            listed = ", ".join(takers[:-1]) + " and " + takers[-1] if len(takers) > 1 else takers[0]
            raise GlaInputError(f"{option} applies to {listed} only", source)
    if layout.is_path and not Path(source).exists():
        raise GlaInputError("no such file or folder", source)
    if input_kind not in layout.input_kinds:
        raise GlaInputError(f"this source lists {layout.input_kinds[0]}s, but the encoder reads {input_kind}s", source)
    names = read_classnames(classnames_file) if classnames_file else None
    rows = layout.list_rows(Request(source, input_kind, split, root, names, download))
    if rows.input_kind != input_kind:
        raise GlaInputError(f"this source lists {rows.input_kind}s, but the encoder reads {input_kind}s", source)
    if not len(rows):
        raise GlaInputError(f"source lists no {input_kind}s", source)
    if classnames_file:
        rows.attrs["classnames_file"] = str(Path(classnames_file).resolve())
    return rows


def select_shots(rows: Rows, shots: int, seed: int, allow_fewer: bool = False) -> Rows:
    """``shots`` rows per class, in source order: the training rows of :func:`glacli.core.subset.few_shot_split`.

    The one sampler of ``gla subset`` (keyed on ids, not positions), so ``extract --shots K --seed S``
    keeps exactly the rows that ``subset --shots K --seed S`` takes from the full extraction. A
    class with fewer rows is refused, or with ``allow_fewer`` keeps all it has (a warning says which).
    """
    require_count(shots, "--shots")
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


def select_ids(rows: Rows, ids: list[str], where: str) -> Rows:
    """The rows whose ids ``ids`` lists (read from the features file ``where``), in source order.

    Every id must be one of the source's and appear once; the first that is not is named.
    """
    position = {row_id: k for k, row_id in enumerate(rows.ids)}
    seen: set[str] = set()
    for row_id in ids:
        if row_id not in position:
            raise GlaInputError(f"--rows-of: lists id {row_id!r}, which the source does not", where)
        if row_id in seen:
            raise GlaInputError(f"--rows-of: lists id {row_id!r} twice", where)
        seen.add(row_id)
    selected = rows.take(np.sort(np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))))
    selected.attrs["rows_of"] = str(Path(where).resolve())
    return selected


def read_bytes(locator: Locator) -> bytes:
    """The raw bytes of one row (runs in DataLoader workers)."""
    if hasattr(locator, "read_bytes"):  # a locator that reads itself (a torchvision dataset item)
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


def describe_layouts() -> str:
    """The layouts as ``gla extract --help`` lists them."""
    return "; ".join(layout.help for layout in LAYOUTS) + "."
