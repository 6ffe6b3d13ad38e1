"""``zeroshot``: a zero-shot head from class names and a prompt set, with the encoder's text tower.

Class names come from ``--classnames`` or a features file (``--like``, whose model is checked
against the encoder's); prompts from :mod:`glacli.io.templates`; the weights from
:func:`glacli.core.zeroshot.zeroshot_weights`. Everything is checked before the model is loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from glacli.base.devices import resolve_device
from glacli.base.errors import GlaInputError
from glacli.base.types import Head, Reporter
from glacli.base.validation import prompt_classnames, renamed_classnames_note
from glacli.core.zeroshot import zeroshot_weights
from glacli.io import store
from glacli.io.encoders import load_encoder
from glacli.io.formats.classnames import read_classnames
from glacli.io.templates import load_templates
from glacli.services.extract import check_backend


def zeroshot_head(output: Path, *, model: str, pretrained: str | None, backend: str,
                  classnames: Path | None = None, like: Path | None = None, templates: str = "imagenet",
                  logit_scale: float | None = None, device: str = "auto",
                  reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Write the head ``normalise(mean_t normalise(text(t(c)))) * logit_scale`` (bias 0) for the classes
    of ``classnames`` or ``like``; ``logit_scale`` defaults to the model's."""
    check_backend(backend, pretrained)
    if (classnames is None) == (like is None):
        raise GlaInputError("give exactly one of --classnames FILE or --like FEATURES.h5")
    store.check_output_path(output)
    template_name, template_list = load_templates(templates)
    parents: list[str] = []
    if like is not None:
        with store.read_rows(like, "features") as features:
            names, recorded, parents = features.classnames, features.attrs, [features.gla_id]
        if not names:
            raise GlaInputError("has no class names to build a head for", like)
    else:
        names, recorded = read_classnames(classnames), {}
    encoder = load_encoder(backend, model, pretrained, resolve_device(device), autocast="off")
    described = encoder.describe()
    scale = encoder.logit_scale if logit_scale is None else logit_scale
    if recorded.get("model") not in (None, described["model"]):
        raise GlaInputError(f"was extracted with model {recorded['model']!r}, not {described['model']!r}", like)
    if recorded.get("pretrained") not in (None, described["pretrained"]):
        reporter.warning(f"{like} was extracted with pretrained {recorded['pretrained']!r}, "
                         f"this head uses {described['pretrained']!r}")
    note = renamed_classnames_note(names)
    if note:
        reporter.message(f"note: {note}")
    reporter.start("zeroshot", len(names))
    weight = zeroshot_weights(encoder.encode_text, prompt_classnames(names), template_list, scale, lambda n: reporter.advance(n))
    attrs = {**described, "templates": template_name, "n_templates": len(template_list), "logit_scale": scale}
    store.write_head(output, Head(weight=weight.numpy().astype(np.float32), bias=np.zeros(len(names), np.float32),
                                  classnames=list(names), head_type="zeroshot", temperature=1.0, attrs=attrs), parents)
    return {"output": str(output), "classes": len(names), "dim": int(weight.shape[1]),
            "templates": template_name, "n_templates": len(template_list), "logit_scale": round(scale, 4)}
