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
from glacli.io.encoders import load_encoder
from glacli.io.encoders.prompts import PromptTemplate, parse_label_words
from glacli.io.formats.classnames import read_classnames
from glacli.io.outputs import check_output_path
from glacli.io.paramfile import write_head
from glacli.io.rowfile import read_rows
from glacli.io.templates import load_templates
from glacli.services.extract import PromptOptions, check_backend, check_prompt_options

DEFAULT_TEMPLATES = "imagenet"


def zeroshot_head(output: Path, *, model: str, pretrained: str | None, backend: str,
                  classnames: Path | None = None, like: Path | None = None, templates: str | None = None,
                  logit_scale: float | None = None, device: str = "auto", prompt: PromptOptions | None = None,
                  reporter: Reporter = Reporter()) -> dict[str, Any]:
    """Write the head ``normalise(mean_t normalise(text(t(c)))) * logit_scale`` (bias 0) for the classes
    of ``classnames`` or ``like``; ``logit_scale`` defaults to the model's. A prompted backend
    (causal-lm) writes its label-word head instead (:func:`label_word_head`)."""
    encoder_cls = check_backend(backend, pretrained)
    if (classnames is None) == (like is None):
        raise GlaInputError("give exactly one of --classnames FILE or --like FEATURES.h5")
    prompt = check_prompt_options(encoder_cls, prompt or PromptOptions())
    if encoder_cls.reads_prompt:
        return label_word_head(output, model=model, backend=backend, classnames=classnames, like=like,
                               templates=templates, logit_scale=logit_scale, device=device, prompt=prompt,
                               reporter=reporter)
    check_output_path(output)
    template_name, template_list = load_templates(templates or DEFAULT_TEMPLATES)
    parents: list[str] = []
    if like is not None:
        with read_rows(like, "features") as features:
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
    weight = zeroshot_weights(encoder.encode_text, prompt_classnames(names), template_list, scale,
                              lambda n: reporter.advance(n))
    attrs = {**described, "templates": template_name, "n_templates": len(template_list), "logit_scale": scale}
    write_head(output, Head(weight=weight.numpy().astype(np.float32), bias=np.zeros(len(names), np.float32),
                            classnames=list(names), head_type="zeroshot", temperature=1.0, attrs=attrs), parents)
    return {"output": str(output), "classes": len(names), "dim": int(weight.shape[1]),
            "templates": template_name, "n_templates": len(template_list), "logit_scale": round(scale, 4)}


def label_word_head(output: Path, *, model: str, backend: str, classnames: Path | None, like: Path | None,
                    templates: str | None, logit_scale: float | None, device: str, prompt: PromptOptions,
                    reporter: Reporter) -> dict[str, Any]:
    """Write the head whose logits are the causal LM's next-token logits of each class's label word
    (the LM head's rows of the word's first token after the prompt, bias 0 or the LM head's).

    With ``like`` the prompt, its label list and ``--max-tokens`` are the ones the features were
    extracted with (a different ``--prompt`` is refused); the label words are the ones that prompt
    listed (else the class names), changed where ``--label-words`` says.
    """
    if templates is not None:
        raise GlaInputError(f"--templates does not apply to the {backend} backend (its head is the LM head's rows "
                            f"of the label words; see --label-words)")
    if logit_scale is not None:
        raise GlaInputError(f"--logit-scale does not apply to the {backend} backend (the LM head sets the scale)")
    check_output_path(output)
    parents: list[str] = []
    recorded: dict[str, Any] = {}
    if like is not None:
        with read_rows(like, "features") as features:
            names, recorded, parents = features.classnames, features.attrs, [features.gla_id]
        if not names:
            raise GlaInputError("has no class names to build a head for", like)
        if recorded.get("encoder") != backend:
            raise GlaInputError(f"was extracted with the {recorded.get('encoder') or 'unknown'} backend, "
                                f"not {backend}", like)
        if prompt.template is not None and PromptTemplate.parse(prompt.template).template != recorded.get("prompt"):
            raise GlaInputError("was extracted with another --prompt; the head reads the prompt from the "
                                "features file (leave --prompt out)", like)
    else:
        names = read_classnames(classnames)
    template = recorded.get("prompt", prompt.template)
    prompt_words = list(recorded.get("label_words", [])) or parse_label_words(prompt.label_words, names)
    head_words = parse_label_words(prompt.label_words, names, prompt_words)
    if len(prompt_words) != len(names):
        raise GlaInputError(f"records {len(prompt_words)} label words for {len(names)} classes", like)
    encoder = load_encoder(backend, model, None, resolve_device(device), autocast="off", prompt=template,
                           max_tokens=int(recorded.get("max_tokens", prompt.max_tokens)), label_words=prompt_words)
    described = encoder.describe()
    for key in ("model", "model_sha256"):
        if recorded.get(key) not in (None, described[key]):
            raise GlaInputError(f"was extracted with {key} {recorded[key]!r}, not {described[key]!r}", like)
    weight, bias, tokens = encoder.label_head(head_words)
    if head_words != prompt_words:
        reporter.warning(f"the prompt lists the label words {', '.join(prompt_words)}; this head scores "
                         f"{', '.join(head_words)}")
    pieces = encoder.tokenizer.convert_ids_to_tokens(tokens)
    attrs = {**described, "label_words": head_words, "label_tokens": [int(t) for t in tokens],
             "label_token_pieces": [str(p) for p in pieces], "logit_scale": 1.0}
    write_head(output, Head(weight=weight.numpy().astype(np.float32), bias=bias.numpy().astype(np.float32),
                            classnames=list(names), head_type="zeroshot", temperature=1.0, attrs=attrs), parents)
    return {"output": str(output), "classes": len(names), "dim": int(weight.shape[1]),
            "label_words": head_words, "label_tokens": [str(p) for p in pieces]}
