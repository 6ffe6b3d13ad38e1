"""Webdataset-style ``.tar`` shards (a path or a glob): entries ``KEY.jpg`` (any image extension)
with ``KEY.cls`` entries holding integer labels.

Images are read later by offset (:class:`glacli.base.types.TarMember`), so DataLoader workers need no
tar index. Ids are ``<shard>/<entry name>``, the shard relative to the shards' common folder.
"""
from __future__ import annotations

import glob
import os
import tarfile
from pathlib import Path

from glacli.base.errors import GlaInputError
from glacli.base.types import Locator, Rows, TarMember
from glacli.io.sources.base import IMAGE_EXTENSIONS, Layout, Request, is_integer, resolve_labels

GLOB_CHARACTERS = "*?["


def claims(source: str) -> bool:
    return source.endswith(".tar") or any(ch in source for ch in GLOB_CHARACTERS)


def list_rows(request: Request) -> Rows:
    pattern = request.source
    shards = sorted(glob.glob(pattern)) if any(ch in pattern for ch in GLOB_CHARACTERS) else [pattern]
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
    bad = next((r for r in raw_labels if r is not None and not is_integer(r)), None)
    if bad is not None:
        raise GlaInputError(f".cls entries must hold integer labels, found {bad[:40]!r}", pattern)
    labels, classnames, warnings = resolve_labels(raw_labels, request.classnames, pattern)
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


LAYOUT = Layout(
    name=".tar shards", help=".tar shards in webdataset layout (a path or a quoted glob)", claims=claims,
    list_rows=list_rows, options=frozenset({"--classnames"}), input_kinds=("image",), is_path=False)
