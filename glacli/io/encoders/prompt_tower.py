"""The frozen text tower of an open_clip model, fed prompt token embeddings plus learned residuals.

``gla fit --method prompt`` learns zero-initialised residuals on the token embeddings of one
prompt per class (the GLA authors' few-shot prompt learner). This module turns the class names
and the template into token embeddings once, and runs the rest of the tower
(``positional_embedding``, ``transformer``, ``ln_final``, pooling, ``text_projection``) the way
``open_clip.CLIP.encode_text`` does, on ``embeddings + residual``. At a zero residual the result
is the model's own text feature of the prompt, so the zero-shot head of that template.

The tower is causal and pools the end-of-text token, so tokens after the longest prompt's end
cannot change any feature: sequences are cut there (about 20 of 77 tokens for ImageNet's class
names), which makes each training step several times cheaper and changes nothing else.

Two parameterisations (``learn``):

- ``context+class`` (the authors'): a residual per class on every token of its prompt after
  the start token: the template's words, the class name's, and the end-of-text token whose
  output is the text feature. Shape [C, L - 1, width].
- ``context`` (CoOp's learned context): one residual shared by all classes on the template's
  own tokens; class names and the end token stay as they are. Shape [template tokens, width].
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from glacli.base.errors import GlaInputError
from glacli.base.types import PROMPT_PLACEHOLDER
from glacli.io.encoders.openclip import OpenClipEncoder

LEARN_CHOICES = ("context+class", "context")
POOLED_TOKEN = ("argmax", "eos")
"""open_clip text pooling that reads one token at or before the end of the prompt."""


class PromptTower:
    """Text features of ``template`` filled with each class name, as a function of the residual."""

    def __init__(self, encoder: OpenClipEncoder, classnames: Sequence[str], template: str, learn: str):
        model = encoder.model
        pool = getattr(model, "text_pool_type", None)
        causal = getattr(model, "attn_mask", None) is not None
        if not hasattr(model, "token_embedding") or pool not in POOLED_TOKEN or not causal:
            raise GlaInputError(f"--method prompt: model {encoder.model_name!r} has no causal open_clip text "
                                f"transformer pooled at its end token (as CLIP's); prompt learning needs one")
        tokenizer = encoder.tokenizer
        if not all(hasattr(tokenizer, name) for name in ("encode", "sot_token_id", "eot_token_id")):
            raise GlaInputError(f"--method prompt: model {encoder.model_name!r} does not use CLIP's tokenizer")
        self.model, self.learn, self.device = model, learn, encoder.device
        prompts = [template.replace(PROMPT_PLACEHOLDER, name) for name in classnames]
        words = [tokenizer.encode(prompt) for prompt in prompts]
        longest = max(range(len(words)), key=lambda c: len(words[c]))
        if len(words[longest]) > model.context_length - 2:
            raise GlaInputError(f"--template: the prompt of class {classnames[longest]!r} has {len(words[longest])} "
                                f"tokens, more than the model's {model.context_length - 2}")
        tokens = tokenizer(prompts).to(self.device)
        if pool == "argmax":
            self.pooled = tokens.argmax(dim=-1)
        else:
            self.pooled = (tokens == model.text_eos_id).int().argmax(dim=-1)
        length = int(self.pooled.max()) + 1
        with torch.no_grad():
            self.embeddings = model.token_embedding(tokens[:, :length]).float()
        self.context_index = None
        if learn == "context":
            self.context_index = _context_positions(tokenizer, words, template, classnames).to(self.device)

    @property
    def residual_shape(self) -> tuple[int, ...]:
        n_classes, length, width = self.embeddings.shape
        if self.context_index is None:
            return n_classes, length - 1, width
        return self.context_index.shape[1], width

    def features(self, residual: torch.Tensor) -> torch.Tensor:
        """[C, D] text features (not normalised) of the prompts with ``residual`` added to their tokens."""
        model = self.model
        if self.context_index is None:
            x = torch.cat([self.embeddings[:, :1], self.embeddings[:, 1:] + residual], dim=1)
        else:
            rows = torch.arange(len(self.embeddings), device=self.device)[:, None]
            x = self.embeddings.index_put((rows, self.context_index), residual, accumulate=True)
        length = x.shape[1]
        cast = model.transformer.get_cast_dtype()
        x = x.to(cast) + model.positional_embedding[:length].to(cast)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = x[torch.arange(len(x), device=self.device), self.pooled]
        projection = model.text_projection
        if projection is None:
            return x.float()
        return (projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection).float()

    def head(self, residual: torch.Tensor, logit_scale: float) -> torch.Tensor:
        """The [C, D] float32 head weight ``normalise(features) * logit_scale``, in full precision."""
        with torch.no_grad():
            return F.normalize(self.features(residual).double(), dim=-1).float() * logit_scale


def _context_positions(tokenizer: object, words: list[list[int]], template: str,
                       classnames: Sequence[str]) -> torch.Tensor:
    """[C, P + S] token positions of the template's own words in each prompt (after the start token).

    The template's text before and after ``{}`` is tokenised alone; each prompt must start with
    the first and end with the second (true whenever the class name is separate words).
    """
    before, after = template.split(PROMPT_PLACEHOLDER)
    prefix, suffix = tokenizer.encode(before), tokenizer.encode(after)
    positions = []
    for c, ids in enumerate(words):
        n = len(ids)
        if n <= len(prefix) + len(suffix) or ids[:len(prefix)] != prefix or ids[n - len(suffix):] != suffix:
            raise GlaInputError(f"--template {template!r}: the prompt of class {classnames[c]!r} does not split into "
                                f"the template's tokens and the class name's (use --learn context+class)")
        positions.append([1 + k for k in range(len(prefix))] + [1 + n - len(suffix) + k for k in range(len(suffix))])
    if not positions[0]:
        raise GlaInputError(f"--template {template!r}: --learn context needs template words around the class name")
    return torch.tensor(positions)
