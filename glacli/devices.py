"""Choosing the torch device from a ``--device`` option (one rule for every command)."""
from __future__ import annotations

import torch

from glacli.errors import GlaInputError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cpu``, ``cuda`` or ``cuda:N`` otherwise; CUDA without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise GlaInputError(f"--device: expected auto, cpu or cuda[:N], got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise GlaInputError(f"--device: expected auto, cpu or cuda[:N], got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GlaInputError("--device cuda: no CUDA device is available (use --device cpu)")
    return resolved
