"""Zero-shot head weights from class-name prompts (pure torch; the prompt sets are :mod:`glacli.io.templates`).

The weight of class c is ``normalise(mean_t normalise(text(template_t(c)))) * logit_scale``: the
prompt ensemble of CLIP, scaled so that ``features @ weight.T`` are CLIP's zero-shot logits.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from glacli.base.types import PROMPT_PLACEHOLDER

TEXTS_PER_BATCH = 1024


def prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every class name, class-major: [c0 t0, c0 t1, ..., c1 t0, ...]."""
    return [template.replace(PROMPT_PLACEHOLDER, name) for name in classnames for template in templates]


def ensemble_weights(text_embeddings: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """[C, T, D] text embeddings -> [C, D] zero-shot head weight.

    Each prompt embedding is L2-normalised, the T prompts of a class are averaged, the mean is
    L2-normalised again and multiplied by ``logit_scale`` (CLIP's ``logit_scale.exp()``).
    """
    per_prompt = F.normalize(text_embeddings.double(), dim=-1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1) * logit_scale


def zeroshot_weights(encode_text: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                     templates: Sequence[str], logit_scale: float,
                     advance: Callable[[int], None] = lambda n: None) -> torch.Tensor:
    """The [C, D] float64 head weight, encoding the prompts of a few classes at a time."""
    per_batch = max(1, TEXTS_PER_BATCH // len(templates))
    weights = []
    for start in range(0, len(classnames), per_batch):
        names = list(classnames[start:start + per_batch])
        embeddings = encode_text(prompts(names, templates)).float().cpu()
        weights.append(ensemble_weights(embeddings.reshape(len(names), len(templates), -1), logit_scale))
        advance(len(names))
    return torch.cat(weights)
