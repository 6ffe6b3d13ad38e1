"""PyTorch files (``.pt``, ``.pth``): a tensor or a dict of tensors, read without unpickling code.

``torch.load(weights_only=True)`` refuses pickled objects other than tensors and plain
containers, so a file cannot run code on import; its refusal becomes a one-line error. A tensor
is necessarily loaded whole. torch is imported only when a ``.pt`` file is read or written.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from glacli.base.errors import GlaInputError, one_line
from glacli.base.types import Head
from glacli.io.formats.base import VALUE_KEYS, ReadOptions, RowSource, array_rows, entry_classnames, pick
from glacli.io.outputs import atomic_output


def load_entries(path: Path) -> dict[str, Any]:
    """A torch file's content as named entries (tensors as numpy arrays): a lone tensor is entry ``""``."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise GlaInputError(f"holds a pickled {refused.group(1)} object, which torch.load(weights_only=True) "
                                "refuses to load; save plain tensors or a dict of tensors", path) from exc
        raise GlaInputError("cannot be read as a torch file (not a torch archive or a tensor pickle)", path) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, zip errors for corrupt files
        raise GlaInputError(f"cannot be read as a torch file: {one_line(exc)}", path) from exc
    if isinstance(obj, torch.Tensor):
        return {"": _numpy(obj)}
    if isinstance(obj, dict):
        return {str(key): _numpy(value) if isinstance(value, torch.Tensor) else value for key, value in obj.items()}
    raise GlaInputError(f"holds a {type(obj).__name__}; expected a tensor or a dict of tensors", path)


def _numpy(tensor: Any) -> Any:
    """A tensor as a numpy array (bfloat16, which numpy lacks, widened to float32 exactly)."""
    import torch

    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def load_state_dict(path: Path) -> dict[str, Any]:
    """A checkpoint's tensors by their dotted names: nested dicts (``{"state_dict": {...}}``, as training
    scripts save) are flattened, ``{"state_dict": {"module.fc.weight": W}}`` -> ``state_dict.module.fc.weight``;
    a whole pickled model is read by :mod:`glacli.io.checkpoints` (inert stand-ins, no code run), its
    parameters named by their module path (``classification_head.weight``)."""
    import torch

    from glacli.io.checkpoints import pickled_globals, read_tensors
    if pickled_globals(path):  # a whole pickled model (WiSE-FT's ImageClassifier): the safe reader's module tree
        return {key: _numpy(value) for key, value in read_tensors(path)[0].items()}
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        else:
            flat[prefix[:-1]] = _numpy(value) if isinstance(value, torch.Tensor) else value

    for key, value in load_entries(path).items():
        walk(f"{key}.", value)
    return flat


def read_rows(path: Path, kind: str, options: ReadOptions) -> RowSource:
    """Rows of a tensor entry (``--key``, else the kind's usual names, else the only tensor)."""
    entries = load_entries(path)
    value_key = pick(entries, options.key, VALUE_KEYS[kind], path, kind, "--key", required=True)
    return array_rows(path, entries, value_key or None, options.labels_key, options.ids_key, options.classnames_key)


def read_prior(path: Path, key: str | None) -> tuple[list[str] | None, Any, dict[str, Any]]:
    """(class names or None, prior values, attributes) of a tensor entry."""
    entries = load_entries(path)
    value_key = pick(entries, key, VALUE_KEYS["prior"], path, "prior", "--key", required=True)
    return entry_classnames(entries, path), entries[value_key], {}


def write_head(head: Head, output: Path) -> list[str]:
    """A head as a dict of tensors and plain values, loadable with ``weights_only=True``."""
    import torch

    with atomic_output(output) as tmp:
        torch.save({"weight": torch.from_numpy(head.weight), "bias": torch.from_numpy(head.bias),
                    "classnames": list(head.classnames), "temperature": float(head.temperature),
                    "head_type": head.head_type}, tmp)
    return ["weight", "bias", "classnames", "temperature", "head_type"]
