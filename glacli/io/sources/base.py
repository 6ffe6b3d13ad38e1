"""What every source layout shares: the request it lists, its registry entry, and the label rules."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.types import Rows

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
TEXT_EXTENSIONS = frozenset({".txt"})
FOLDER_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "text": TEXT_EXTENSIONS}
"""Input kind -> the file extensions a class folder of that kind lists."""
INPUT_KINDS = tuple(FOLDER_EXTENSIONS)
_INTEGER = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class Request:
    """What ``gla extract`` asks of a source: the source text and the options that shape its listing."""

    source: str
    input_kind: str
    split: str | None = None
    root: str | None = None
    classnames: list[str] | None = None
    """The names of ``--classnames``, already read and checked."""
    download: bool = False

    @property
    def path(self) -> Path:
        return Path(self.source)


@dataclass(frozen=True)
class Layout:
    """One way a data source can be laid out: how to recognise it, what it takes, how to list it."""

    name: str
    """What the layout is called in messages ("--root applies to manifests ... only")."""
    help: str
    """How ``gla extract --help`` describes the layout."""
    claims: Callable[[str], bool]
    """Whether a SOURCE argument is of this layout (decided from its text, or a folder's existence)."""
    list_rows: Callable[[Request], Rows]
    options: frozenset[str]
    """The options of ``extract`` that apply to it, of ``--split``, ``--root``, ``--classnames``, ``--download``."""
    input_kinds: tuple[str, ...] = INPUT_KINDS
    """What its rows can hold (``image``, ``text``)."""
    is_path: bool = True
    """Whether SOURCE is a file or folder that must exist (not a glob or a dataset name)."""


def is_integer(text: str) -> bool:
    return bool(_INTEGER.match(text))


def resolve_labels(raw: list[str | None], given_names: list[str] | None, path: Path | str
                   ) -> tuple[np.ndarray, list[str], list[str]]:
    """Label cells -> (indices, class names, warnings). Integer labels index ``given_names`` (or
    become names "0".."C-1"); text labels are class names; None is unlabelled (-1)."""
    known = [r for r in raw if r is not None]
    warnings: list[str] = []
    if known and all(is_integer(r) for r in known):
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
