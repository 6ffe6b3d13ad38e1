"""Applying a linear head to features: ``logits = (features @ weight.T + bias) / temperature`` (pure torch).

Zero-shot and linear-probe heads are the same object (:class:`glacli.types.Head`); this is the one
place that turns features into logits, used by ``gla logits`` and by the probe's validation scoring.
"""
from __future__ import annotations

import torch

from glacli.types import Head


def apply_head(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """Logits ``(features @ weight.T + bias) / temperature``.

    ``features`` [N, D], ``weight`` [C, D], ``bias`` [C] -> [N, C], computed in the dtype and on
    the device of ``weight`` (features are cast to it, so float16 features give float32 logits).
    """
    x = features.to(device=weight.device, dtype=weight.dtype)
    logits = torch.addmm(bias.to(weight.dtype), x, weight.T)
    return logits / temperature if temperature != 1.0 else logits


def head_tensors(head: Head, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A head's ``weight`` and ``bias`` as tensors (the temperature stays a float on the head)."""
    weight = torch.as_tensor(head.weight).to(device=device, dtype=dtype)
    bias = torch.as_tensor(head.bias).to(device=device, dtype=dtype)
    return weight, bias
