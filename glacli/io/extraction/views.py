"""Augmented views as rows of a features file (``gla extract --augment-views K``).

Each image becomes K consecutive rows with the ids ``<image id>#v0`` ... ``<image id>#v<K-1>``
and the image's label. View ``k`` is drawn (:mod:`glacli.io.encoders.augment`) from the seed
``blake2b(f"{seed}\\0{image id}#v{k}")``: it depends on ``--seed``, the image and ``k`` only, so
a rerun, a resumed run, another batch size or a torchrun job encode the same pixels.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

from glacli.base.types import Rows
from glacli.io.encoders.augment import DESCRIPTION

VIEW_MARK = "#v"
"""Between an image's id and its view number in the id of a view."""
_VIEW_SUFFIX = re.compile(re.escape(VIEW_MARK) + r"\d+\Z")


def view_id(image_id: str, k: int) -> str:
    return f"{image_id}{VIEW_MARK}{k}"


def image_of(row_id: str) -> str:
    """The id of the image a view was cropped from (the id itself when it names no view)."""
    return _VIEW_SUFFIX.sub("", row_id)


def expand_views(rows: Rows, views: int, seed: int) -> Rows:
    """Every row repeated ``views`` times in place, with view ids; records ``augment_views``, ``augment``
    and ``seed``."""
    expanded = rows.take(np.repeat(np.arange(len(rows)), views))
    expanded.ids = [view_id(i, k) for i in rows.ids for k in range(views)]
    expanded.attrs.update(augment_views=views, augment=DESCRIPTION, seed=seed)
    return expanded


def view_seeds(ids: list[str], seed: int) -> list[int]:
    """The seed of each view's crop and flip, from ``--seed`` and the view's id."""
    prefix = f"{seed}\0".encode()
    return [int.from_bytes(hashlib.blake2b(prefix + i.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                           "little") for i in ids]
