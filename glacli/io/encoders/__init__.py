"""Encoder backends behind one registry: ``load_encoder(backend, model, pretrained, device)``.

``gla extract`` and ``gla zeroshot`` only talk to :class:`~glacli.io.encoders.base.Encoder`; a backend
joins by subclassing it in its own module and adding one line to :data:`BACKENDS`. An encoder says
what its rows are (``input_kind``: ``"image"`` or ``"text"``), turns the raw bytes of one row into
a model input in DataLoader workers (``loader``), moves a collated batch to its device
(``prepare``) and returns L2-normalised embeddings (``encode_batch``, ``encode_text``).

This module is the registry only and imports no backend, nor torch: the commands build their help
from it without loading a model library.

    base.py      Encoder, DecodeError, the autocast rule
    openclip.py  any open_clip architecture (images)
    sbert.py     sentence-transformers (texts)
    causal_lm.py a causal language model's last hidden state after a prompt (texts)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from glacli.base.errors import GlaInputError

if TYPE_CHECKING:
    import torch

    from glacli.io.encoders.base import Encoder

BACKENDS: dict[str, str] = {
    "open_clip": "glacli.io.encoders.openclip:OpenClipEncoder",
    "sentence-transformers": "glacli.io.encoders.sbert:SentenceTransformerEncoder",
    "causal-lm": "glacli.io.encoders.causal_lm:CausalLMEncoder",
}
"""Backend name -> ``module:class``; imported on use."""

DEFAULT_BACKEND = "open_clip"
AUTOCAST_CHOICES = ("fp16", "bf16", "off")
"""``--autocast``: mixed precision on CUDA in float16 or bfloat16, or none."""


def encoder_class(backend: str) -> type[Encoder]:
    if backend not in BACKENDS:
        raise GlaInputError(f"unknown encoder backend {backend!r} (known: {', '.join(sorted(BACKENDS))})")
    module, name = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), name)


def load_encoder(backend: str, model: str, pretrained: str | None, device: str | torch.device = "auto",
                 **options: Any) -> Encoder:
    """The one way in: build the encoder of ``backend`` for ``model`` with ``pretrained`` weights."""
    from glacli.base.devices import resolve_device

    resolved = device if not isinstance(device, str) else resolve_device(device)
    return encoder_class(backend)(model, pretrained, resolved, **options)
