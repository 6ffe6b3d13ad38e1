"""Choosing the compute device from a ``--device`` option (one rule for every command).

torch is imported only when a torch device is asked for, so the numpy paths (``estimate-prior``,
``evaluate`` and ``report`` on a CPU) start without it.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from glacli.base.errors import GlaInputError

if TYPE_CHECKING:
    import torch


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cpu``, ``cuda`` or ``cuda:N`` otherwise; CUDA without a GPU is a user error."""
    import torch

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


def compute_device(device: str) -> str:
    """``cpu`` (numpy; torch is not imported) or a CUDA device name; ``auto`` takes a GPU when present."""
    if device == "cpu":
        return "cpu"
    if device == "auto" and not os.path.exists("/dev/nvidia0") and not os.path.isdir("/proc/driver/nvidia/gpus"):
        return "cpu"  # no NVIDIA device on this machine: no need to import torch to find out
    return str(resolve_device(device))
