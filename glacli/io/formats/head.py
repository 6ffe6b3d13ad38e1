"""Classification heads in other tools' files: a checkpoint's ``<key>.weight`` / ``<key>.bias``, or an array.

Two layouts are read:

- a **state dict** (``.pt``, ``.pth``, ``.bin``, ``.safetensors``; also ``.npz``) holding
  ``<prefix><key>.weight`` [C, D] and, usually, ``<prefix><key>.bias`` [C]. Training code adds
  prefixes (``module.`` from DDP, ``model.``, ``image_encoder.model.``, a ``state_dict`` level that
  nests the whole dict): the key is matched after any of them, and two matches are refused.
- an **array** [C, D] (a ``.npy``, or an entry of an ``.npz`` / ``.pt`` / ``.safetensors`` named by
  ``--key``), such as the zero-shot text classifiers that Tip-Adapter or CoOp caches hold; its bias
  is the sibling entry whose name ends in ``bias`` where the weight's ends in ``weight``, else none.

torch is imported only for ``.pt`` / ``.pth`` / ``.bin`` files; ``.safetensors`` is read with NumPy.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.errors import GlaInputError
from glacli.base.validation import require_numeric
from glacli.io.formats import npy, pt, safetensors
from glacli.io.formats.base import entry_classnames

HEAD_KEYS = ("classification_head", "head", "classifier", "fc", "text_head", "weight")
"""Names tried, in order, when ``--key`` is not given: as ``<key>.weight`` of a state dict or as an array."""
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
HEAD_SUFFIXES = (".npy", ".npz", *TORCH_SUFFIXES, ".safetensors")


@dataclass
class HeadArrays:
    """What a file holds for a head: weight [C, D], bias [C] or None, class names if it carries them,
    and which entries they came from (``layout``: ``state dict`` or ``array``)."""

    weight: np.ndarray
    bias: np.ndarray | None
    classnames: list[str] | None
    weight_entry: str
    bias_entry: str | None
    layout: str
    attrs: dict[str, Any]


def head_entries(path: Path) -> Mapping[str, Any]:
    """The named arrays of a head file, by the reader its suffix names (dotted names for checkpoints)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return {"": npy.load_npy(path)}
    if suffix == ".npz":
        return npy.load_npz(path)
    if suffix in TORCH_SUFFIXES:
        return pt.load_state_dict(path)
    return safetensors.load_entries(path)


def read_head(path: Path, key: str | None, classnames_key: str | None = None) -> HeadArrays:
    """The head under ``key`` (``<prefix><key>.weight`` or an array entry ``key``), else under the first of
    :data:`HEAD_KEYS` found; a bare ``.npy`` is the weight itself."""
    entries = head_entries(path)
    if path.suffix.lower() == ".npy":
        if key is not None:
            raise GlaInputError("--key names an entry, but a .npy file holds one array", path)
        found = _array(entries, "", path)
    elif key is not None:
        found = _find(entries, key, path)
        if found is None:
            raise GlaInputError(f"has no entry {key!r} or {key + '.weight'!r} after any prefix (--key); "
                                f"entries: {_listing(entries)}", path)
    else:
        found = next((hit for k in HEAD_KEYS if (hit := _find(entries, k, path)) is not None), None)
        if found is None:
            raise GlaInputError(f"no head found (tried {', '.join(HEAD_KEYS)} as an array or as <key>.weight); "
                                f"name it with --key; entries: {_listing(entries)}", path)
    found.classnames = None if path.suffix.lower() == ".npy" else entry_classnames(entries, path, classnames_key)
    found.attrs = {k: entries[k] for k in ("temperature", "head_type") if k in entries and found.layout == "array"}
    return found


def _find(entries: Mapping[str, Any], key: str, path: Path) -> HeadArrays | None:
    """``key`` as an array entry, else as ``<prefix><key>.weight`` (one match only), else None."""
    if key in entries:
        return _array(entries, key, path)
    suffix = f"{key}.weight"
    matches = [name for name in entries if name == suffix or name.endswith("." + suffix)]
    if len(matches) > 1:
        raise GlaInputError(f"several entries end in {suffix!r} ({', '.join(matches[:4])}); give the one to "
                            "take as --key without '.weight'", path)
    if not matches:
        return None
    weight_entry = matches[0]
    bias_entry = weight_entry[:-len("weight")] + "bias"
    return _arrays(entries, weight_entry, bias_entry if bias_entry in entries else None, "state dict", path)


def _array(entries: Mapping[str, Any], key: str, path: Path) -> HeadArrays:
    bias_entry = key[:-len("weight")] + "bias" if key.endswith("weight") else None
    return _arrays(entries, key, bias_entry if bias_entry in entries else None, "array", path)


def _arrays(entries: Mapping[str, Any], weight_entry: str, bias_entry: str | None, layout: str,
            path: Path) -> HeadArrays:
    what = f"entry {weight_entry!r}" if weight_entry else "the array"
    weight = require_numeric(np.asarray(entries[weight_entry]), what, path)
    if weight.ndim != 2:
        raise GlaInputError(f"{what} has shape {weight.shape}, expected a head weight [classes, dim]", path)
    bias = None
    if bias_entry is not None:
        bias = require_numeric(np.asarray(entries[bias_entry]), f"entry {bias_entry!r}", path)
        if bias.shape != (weight.shape[0],):
            raise GlaInputError(f"entry {bias_entry!r} has shape {bias.shape}, expected ({weight.shape[0]},) "
                                f"for the {weight.shape[0]} classes of {weight_entry!r}", path)
    return HeadArrays(weight, bias, None, weight_entry, bias_entry, layout, {})


def _listing(entries: Mapping[str, Any]) -> str:
    names = sorted(entries)
    return ", ".join(names[:12]) + (f" ... ({len(names)} in all)" if len(names) > 12 else "") if names else "none"
