"""Model checkpoints as files: read without running code from them, normalise their keys, write.

People hold fine-tuned CLIP weights in a few layouts, all read here into one flat state dict
(parameter name -> tensor) in open_clip's own key names:

- a state dict saved with ``torch.save`` (``.pt``, ``.bin``, ``.pth``), possibly nested in a
  training checkpoint (``{"epoch": ..., "state_dict": {...}}``);
- a ``.safetensors`` file;
- a whole pickled model (``torch.save(model)``, as WiSE-FT saves its ``ImageClassifier``).

Every pickle is read by torch's weights-only unpickler. The classes a pickled model names
(``ImageClassifier``, ``torch.nn.Linear``, ...) are never imported: each becomes an inert
stand-in that only keeps the attributes the pickle sets, so that the parameters and buffers can
be read off the module tree. A pickle that *calls* a function while it loads (how a malicious
``__reduce__`` runs ``os.system``) is refused before the call: a stand-in called by the pickle
refuses unless its name is a class's (CapWords; then it only records its arguments, as enums
and named tuples are pickled). Modules torch blocks (``os``, ``sys``, ...) are refused by torch.

Training code puts the model under a prefix (``module.`` from DDP, ``model.``,
``image_encoder.model.`` from WiSE-FT's ImageEncoder, ``state_dict.`` from the nesting): the
prefix in front of the image tower's keys (``visual.``) is found, checked to be made of those
parts only, and stripped; keys outside it (a classification head, optimizer state) are left out
and listed in :attr:`Checkpoint.ignored`.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glacli.base.errors import GlaInputError, one_line

if TYPE_CHECKING:
    import torch

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
"""File endings read as checkpoints (``--pretrained`` of extract and zeroshot, ``gla interpolate``)."""
PREFIX_PARTS = ("module", "model", "image_encoder", "state_dict")
"""What a key prefix may be made of: DDP's ``module``, ``model``, WiSE-FT's ``image_encoder``, and
the ``state_dict`` entry of a training checkpoint."""
IMAGE_TOWER = "visual."


@dataclass
class Checkpoint:
    """The tensors of a checkpoint file under open_clip's key names, and where they were found."""

    path: str
    state_dict: dict[str, torch.Tensor]
    sha256: str
    prefix: str
    """The prefix stripped from the keys (``""``: none)."""
    layout: str
    """``state dict``, ``safetensors`` or ``pickled model``."""
    ignored: list[str] = field(default_factory=list)
    """Keys outside the prefix, left out (e.g. ``classification_head.weight``)."""

    def describe(self) -> dict[str, str]:
        """Attributes that record the checkpoint in the files made from it."""
        return {"checkpoint_sha256": self.sha256, "checkpoint_prefix": self.prefix or "(none)",
                "checkpoint_layout": self.layout}


def is_checkpoint_file(text: str | None) -> bool:
    """Whether ``--pretrained`` names an existing checkpoint file (rather than an open_clip tag)."""
    return bool(text) and Path(text).suffix.lower() in CHECKPOINT_SUFFIXES and Path(text).is_file()


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read ``path`` (any layout of the module docstring) into open_clip key names."""
    path = Path(path)
    if not path.is_file():
        raise GlaInputError("no such checkpoint file", path)
    tensors, layout = read_tensors(path)
    state, prefix, ignored = strip_prefix(tensors, path)
    return Checkpoint(str(path), state, file_sha256(path), prefix, layout, ignored)


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of the file as a flat ``{dotted.name: tensor}``, and the file's layout."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return dict(load_file(str(path), device="cpu")), "safetensors"
        except (SafetensorError, OSError, ValueError) as exc:
            raise GlaInputError(f"cannot read safetensors file ({one_line(exc)})", path) from exc
    loaded, pickled_objects = _unpickle(path)
    tensors: dict[str, torch.Tensor] = {}
    _collect(loaded, "", tensors, set())
    if not tensors:
        raise GlaInputError("holds no tensors (not a model checkpoint)", path)
    return tensors, "pickled model" if pickled_objects else "state dict"


def strip_prefix(tensors: dict[str, torch.Tensor], path: str | Path
                 ) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(the tensors under the image tower's prefix, with it stripped; the prefix; the keys left out).

    Without an image tower (``visual.`` keys) the keys are kept as they are.
    """
    prefixes = sorted({key[:at] for key in tensors for at in [_tower_at(key)] if at >= 0})
    if not prefixes:
        return dict(tensors), "", []
    if len(prefixes) > 1:
        listed = ", ".join(repr(p or "(none)") for p in prefixes[:3])
        raise GlaInputError(f"holds image towers under several key prefixes ({listed}); which one is meant "
                            f"is not clear", path)
    prefix = prefixes[0]
    unknown = [part for part in prefix.split(".")[:-1] if part not in PREFIX_PARTS]
    if unknown:
        raise GlaInputError(f"keys start with {prefix!r}: not a prefix training code adds (known parts: "
                            f"{', '.join(PREFIX_PARTS)})", path)
    kept = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    ignored = [key for key in tensors if not key.startswith(prefix)]
    return kept, prefix, ignored


def _tower_at(key: str) -> int:
    """Where ``visual.`` starts a key segment in ``key`` (-1: nowhere)."""
    at = key.find(IMAGE_TOWER)
    while at > 0 and key[at - 1] != ".":
        at = key.find(IMAGE_TOWER, at + 1)
    return at


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_safetensors(state: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Write a state dict as ``.safetensors``, atomically (through :func:`glacli.io.outputs.atomic_output`)."""
    from safetensors.torch import save_file

    from glacli.io.outputs import atomic_output
    with atomic_output(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)


# --------------------------------------------------------------------------- the safe unpickling


class StandIn:
    """An object of a class the pickle names but nobody imported: it holds the attributes the pickle
    sets (``__dict__``) and the arguments it was made with, and has no behaviour."""

    _stand_in_for: str = ""
    args: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        return f"<stand-in for {self._stand_in_for}>"


class RefusedCall(Exception):
    """The pickle asked to call a function while loading."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(name)


class _StandInType(type):
    """The type of stand-in classes: the unpickler's NEWOBJ uses ``__new__`` (allowed); a call, which
    is what REDUCE does, is refused for anything not named like a class."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        name = cls._stand_in_for.rsplit(".", 1)[-1]
        if not name[:1].isupper():
            raise RefusedCall(cls._stand_in_for)
        instance = cls.__new__(cls)
        instance.args = args
        return instance


def _stand_in(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    return _StandInType(name or full_name, (StandIn,), {"_stand_in_for": full_name, "__module__": f"stand_in.{module}"})


def pickled_globals(path: str | Path) -> list[str]:
    """The classes and functions a torch zip archive names beyond what torch's weights-only unpickler
    allows (a pickled model's classes); empty for a plain state dict or a file that is not such an archive."""
    import torch
    if not zipfile.is_zipfile(path):
        return []
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (ValueError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile):
        return []


def _unpickle(path: Path) -> tuple[Any, bool]:
    """``torch.load`` with ``weights_only=True``, every global the file names given an inert stand-in;
    and whether there were any (a pickled model rather than a state dict)."""
    import torch
    if not zipfile.is_zipfile(path):
        raise GlaInputError("not a torch.save zip archive, a .safetensors file or a state dict torch can read "
                            "without running code (legacy pickles are refused)", path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        what = "a TorchScript archive (give the open_clip tag, e.g. openai)" if "torchscript" in str(exc) \
            else f"not readable as a torch checkpoint ({one_line(exc)})"
        raise GlaInputError(what, path) from exc
    stand_ins = [(_stand_in(name), name) for name in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RefusedCall as exc:
        raise GlaInputError(f"refused: the pickle calls {exc.name} while loading (a checkpoint never needs "
                            f"to; nothing was run)", path) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError) as exc:
        raise GlaInputError(f"refused: cannot be read without running code from it ({_reason(exc)})", path) from None
    return loaded, bool(stand_ins)


def _reason(exc: BaseException) -> str:
    """The line of torch's weights-only error that names what was refused (its first line is advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unrecognized" in line]
    return one_line(Exception(named[0] if named else lines[0] if lines else type(exc).__name__))


def _collect(value: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    """Flatten tensors found in dicts and module trees into ``out`` under dotted names.

    A module (a stand-in or a plain object with ``_parameters``/``_modules``) contributes its
    parameters, its persistent buffers and its sub-modules, as ``nn.Module.state_dict`` does.
    """
    import torch
    if id(value) in seen:
        return
    if isinstance(value, torch.Tensor):
        out[prefix[:-1]] = value.detach()
        return
    if isinstance(value, Mapping):
        seen.add(id(value))
        for key, item in value.items():
            if isinstance(key, str):
                _collect(item, f"{prefix}{key}.", out, seen)
        return
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict) and "_parameters" in state:
        seen.add(id(value))
        skipped = set(state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for key, item in (state.get(group) or {}).items():
                if item is not None and key not in skipped:
                    _collect(item, f"{prefix}{key}.", out, seen)
        for key, item in (state.get("_modules") or {}).items():
            if item is not None:
                _collect(item, f"{prefix}{key}.", out, seen)
