"""Applying a linear head to features: ``logits = (features @ weight.T + bias) / temperature``.

Zero-shot and linear-probe heads are the same object (:class:`glacli.base.types.Head`); this is the one
place that turns features into logits, used by ``gla logits`` (numpy on a CPU, so it starts
without torch) and by the probe's validation scoring (torch tensors): the array-API namespace of
the weight decides.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from glacli.base.types import Head

if TYPE_CHECKING:
    import torch


def apply_head(features: Any, weight: Any, bias: Any, temperature: float = 1.0) -> Any:
    """Logits ``(features @ weight.T + bias) / temperature``.

    ``features`` [N, D], ``weight`` [C, D], ``bias`` [C] -> [N, C] (numpy arrays or torch tensors),
    computed in the dtype and on the device of ``weight`` (features are cast to it, so float16
    features give float32 logits).
    """
    xp = array_namespace(weight)
    x = xp.astype(xp.asarray(features, device=device_of(weight)), weight.dtype, copy=False)
    logits = x @ weight.T + xp.astype(bias, weight.dtype, copy=False)
    return logits / temperature if temperature != 1.0 else logits


def head_tensors(head: Head, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A head's ``weight`` and ``bias`` as torch tensors (float32 unless ``dtype``; the temperature
    stays a float on the head)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    weight = torch.as_tensor(head.weight).to(device=device, dtype=dtype)
    bias = torch.as_tensor(head.bias).to(device=device, dtype=dtype)
    return weight, bias
