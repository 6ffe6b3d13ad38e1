"""The sentence-transformers backend: text encoders (e.g. all-MiniLM-L6-v2) for documents and prompts.

Rows are texts: the loader decodes a text file's bytes (or an inline manifest cell) as UTF-8,
and a batch of strings is embedded in one ``SentenceTransformer.encode`` call. Documents and
prompts go through the same encoder, so zero-shot text classification is the cosine similarity
between a document and prompted class names, scaled by :data:`DEFAULT_LOGIT_SCALE`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from glacli.base.errors import GlaInputError, one_line
from glacli.io.encoders.base import TextEncoder, amp_dtype_for, quiet_weight_loading

DEFAULT_LOGIT_SCALE = 100.0
"""Sentence encoders have no learnt logit scale; 100 puts their cosine similarities on CLIP's scale."""
INSTALL_HINT = "pip install 'gla[text]'"



class SentenceTransformerEncoder(TextEncoder):
    """A ``sentence_transformers.SentenceTransformer``, frozen in eval mode.

    ``model`` is a local model folder (recorded as an absolute path) or a hub name, passed to
    ``SentenceTransformer`` unchanged; the folder holds the weights, so there is no ``pretrained``.
    """

    backend = "sentence-transformers"
    needs_pretrained = False

    def __init__(self, model: str, pretrained: str | None, device: torch.device, autocast: str = "fp16"):
        if pretrained:
            raise GlaInputError(f"--pretrained does not apply to the {self.backend} backend "
                                f"(the --model folder or name holds the weights)")
        amp_dtype = amp_dtype_for(autocast, device)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise GlaInputError(f"the {self.backend} backend needs the sentence-transformers package: "
                                f"{INSTALL_HINT}") from None
        name = _resolve_model(model)
        try:
            with quiet_weight_loading():
                net = SentenceTransformer(name, device=str(device))
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise GlaInputError(f"cannot load sentence-transformers model ({one_line(exc)})", model) from exc
        net.eval().requires_grad_(False)
        self.model = net
        self.model_name, self.pretrained, self.device = name, None, device
        self.amp_dtype = amp_dtype
        get_dim = getattr(net, "get_embedding_dimension", None) or net.get_sentence_embedding_dimension
        self.dim = int(get_dim() or self.encode_text(["a"]).shape[-1])

    @property
    def logit_scale(self) -> float:
        return DEFAULT_LOGIT_SCALE

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dim": self.dim}

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        with torch.inference_mode(), self._autocast():
            embeddings = self.model.encode(texts, batch_size=max(1, len(texts)), convert_to_tensor=True,
                                           normalize_embeddings=True, show_progress_bar=False)
        return torch.nn.functional.normalize(embeddings.float(), dim=-1)



def _resolve_model(model: str) -> str:
    """A local folder becomes its absolute path (so files made from relative and absolute paths
    agree); something that reads as a path but is missing is refused instead of asking the hub."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise GlaInputError("a sentence-transformers model is a folder, not a file", model)
        return str(path.resolve())
    if model.startswith((".", "~", "/", os.sep)) or model.count("/") > 1:  # hub names are ``org/name``
        raise GlaInputError("no such model folder", model)
    return model
