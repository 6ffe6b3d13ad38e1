"""``gla zeroshot``: class names and a prompt set -> a zero-shot head, through an encoder's text tower."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glacli.base.validation import require_positive
from glacli.cli.app import BackendOption, DeviceOption, JsonFileOutput, JsonOutput, LabelWordsOption, ModelOption
from glacli.cli.app import PretrainedOption, PromptOption
from glacli.cli.app import app, output_option, print_summary, reporting
from glacli.io.encoders import DEFAULT_BACKEND
from glacli.io.templates import template_set_names

Output = output_option("HEAD.h5", "Head file")


@app.command("zeroshot")
def zeroshot_command(
    output: Output,
    model: ModelOption,
    pretrained: PretrainedOption = None,
    classnames: Annotated[Path | None, typer.Option(
        "--classnames", help="Class names, one per line or a JSON list of strings.")] = None,
    like: Annotated[Path | None, typer.Option(
        "--like", help="Take the class names (and check the model) from this features file.")] = None,
    templates: Annotated[str | None, typer.Option(
        "--templates", help=f"Prompt set: one of {', '.join(template_set_names())} (imagenet: CLIP's 80 prompts, "
                            "news: for text encoders), or a file with one template per line, '{}' for the class "
                            "name. Default: imagenet.", show_default=False)] = None,
    logit_scale: Annotated[str | None, typer.Option(
        "--logit-scale", help="Multiplier of the cosine similarities (default: the model's; CLIP's learnt "
                              "logit_scale.exp(), 100 for sentence-transformers).", show_default=False)] = None,
    device: DeviceOption = "auto",
    backend: BackendOption = DEFAULT_BACKEND,
    label_words: LabelWordsOption = None,
    prompt: PromptOption = None,
    json_output: JsonOutput = False,
    json_out: JsonFileOutput = None,
) -> None:
    """Build a zero-shot head: prompt-ensembled class text embeddings times CLIP's logit scale.

    weight[c] = normalise(mean over templates of normalise(text(template(c)))) * logit_scale.exp(),
    bias 0, head_type zeroshot. Text encoders use the same formula with logit scale 100. A causal
    language model (--backend causal-lm) gives the LM head's rows of each label word's first token,
    so the head's logits are the model's next-token logits of the label words; with --like the
    prompt is the one the features were extracted with.

    Example:

        gla zeroshot --model ViT-B-16 --pretrained openai --like val.h5 --templates imagenet -o zs_head.h5

        gla zeroshot --backend sentence-transformers --model models/all-MiniLM-L6-v2 --like news.h5 \\
            --templates news -o news_head.h5

        gla zeroshot --backend causal-lm --model SmolLM2-135M-Instruct.Q4_1.gguf --like news_llm.h5 -o llm_head.h5
    """
    from glacli.services.extract import PromptOptions
    from glacli.services.zeroshot import zeroshot_head  # torch: imported when a model is needed, not for the help

    scale = None if logit_scale is None else require_positive(logit_scale, "--logit-scale")
    with reporting() as reporter:
        summary = zeroshot_head(output, model=model, pretrained=pretrained, backend=backend, classnames=classnames,
                                like=like, templates=templates, logit_scale=scale, device=device, reporter=reporter,
                                prompt=PromptOptions(template=prompt, label_words=label_words))
    print_summary(summary, json_output, "gla zeroshot", json_out)
