"""``gla extract`` (images -> features file) and ``gla zeroshot`` (class names -> zero-shot head).

Both load their model through the encoder registry (:mod:`glacli.encoders`); the pipeline is
:mod:`glacli.extraction`, the rows come from :mod:`glacli.sources`, the head math from
:mod:`glacli.zeroshot`. This module parses options, calls them and reports.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from glacli import store
from glacli.app import app, err, fail, print_fields, print_json
from glacli.encoders import (
    BACKENDS,
    DEFAULT_BACKEND,
    Encoder,
    encoder_class,
    load_encoder,
)

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


class RateColumn(ProgressColumn):
    """Rows per second of the task, in the task's ``unit`` (img/s, text/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {task.fields.get('unit', 'img')}/s")


def _progress() -> Progress:
    """A bar that vanishes when done, so errors stay one line and the summary table carries the rate."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err,
                    transient=True)


def _encoder_class(backend: str, pretrained: str | None) -> type[Encoder]:
    """The backend's encoder class, once ``--backend`` and ``--pretrained`` agree with it (before any
    model is loaded, so a wrong option costs nothing)."""
    if backend not in BACKENDS:
        fail(f"--backend: unknown backend {backend!r} (known: {', '.join(sorted(BACKENDS))})")
    cls = encoder_class(backend)
    if cls.needs_pretrained and not (pretrained or "").strip():
        fail(f"--pretrained: the {backend} backend needs weights: an open_clip tag, an hf-hub: name "
             f"or a checkpoint path")
    if not cls.needs_pretrained and pretrained:
        fail(f"--pretrained does not apply to the {backend} backend (--model names the model and its weights)")
    return cls


ModelOption = Annotated[str, typer.Option(
    "--model", help="open_clip: an architecture (e.g. ViT-B-16) or the path of a model-config .json; "
                    "sentence-transformers: a model folder or a hub name.",
    show_default=False)]
PretrainedOption = Annotated[str | None, typer.Option(
    "--pretrained", help="open_clip weights: a tag (openai, laion2b_s34b_b79k), an hf-hub: name, or a local "
                         "checkpoint path (sentence-transformers takes none).", show_default=False)]
BackendOption = Annotated[str, typer.Option(
    "--backend", "--encoder", help=f"Encoder backend: {', '.join(sorted(BACKENDS))}.")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]


@app.command("extract")
def extract_command(
    source: Annotated[str, typer.Argument(
        help="Image folder (one sub-folder per class), manifest (.csv/.tsv with path,label columns; .txt lines "
             "'path label'), CoOp split .json (with --split), .tar shards (a path or a quoted glob), "
             "or torchvision:NAME (e.g. torchvision:CIFAR100, with --root, --split and --download). "
             "Text encoders: a folder of .txt files per class, or a .csv/.tsv with text,label[,id] columns.",
        metavar="SOURCE", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Features file to write (.h5).",
                                         show_default=False)],
    model: ModelOption,
    pretrained: PretrainedOption = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="Split of a CoOp split JSON (train, val or test) or of a torchvision: dataset.")
                     ] = None,
    root: Annotated[Path | None, typer.Option(
        "--root", help="Folder that relative manifest/split paths start from (default: the manifest's folder); "
                       "for torchvision: sources, the data folder.")
                    ] = None,
    classnames: Annotated[Path | None, typer.Option(
        "--classnames", help="Class names, one per line or a JSON list: names integer labels, or fixes the class "
                             "order.")] = None,
    shots: Annotated[int | None, typer.Option(
        "--shots", help="Keep K images per class: the rows 'gla subset --shots K --seed S' would take.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --shots selection.")] = 0,
    allow_fewer: Annotated[bool, typer.Option(
        "--allow-fewer", help="With --shots, a class with fewer images keeps all it has instead of stopping with "
                              "an error.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 128,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes decoding images.")
                       ] = DEFAULT_WORKERS,
    device: DeviceOption = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Stored feature precision: float16 or float32.")
                     ] = "float16",
    autocast: Annotated[str, typer.Option("--autocast", help="Mixed precision on CUDA: fp16, bf16 or off.")
                        ] = "fp16",
    gpu_decode: Annotated[bool, typer.Option(
        "--gpu-decode", help="Decode JPEGs on the GPU (torchvision.io.decode_jpeg) when CPU decoding bounds the run."
    )] = False,
    commit_every: Annotated[int, typer.Option(
        "--commit-every", help="Rows per committed chunk: the most work a crash can lose.")] = 4096,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Leave unreadable images out (their ids are recorded in the file) instead of stopping."
    )] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing output, or discard an unfinished run of something else.")] = False,
    download: Annotated[bool, typer.Option(
        "--download", help="torchvision: sources: let torchvision download the dataset into --root.")] = False,
    backend: BackendOption = DEFAULT_BACKEND,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Encode images (or texts) once into a features file (L2-normalised rows, labels, ids, class names).

    Safe to kill: the same command resumes from the last committed chunk. Under torchrun each
    rank encodes its own share and rank 0 writes the same file a single process would.

    Example:

        gla extract data/imagenet/val -o val.h5 --model ViT-B-16 --pretrained openai

        gla extract split_zhou_OxfordPets.json --split train --root data/pets/images \\
            --shots 16 --seed 1 -o pets_train.h5 --model ViT-B-16 --pretrained openai

        torchrun --nproc-per-node 8 -m glacli extract 'shards/train-*.tar' -o train.h5 \\
            --model ViT-B-16 --pretrained openai --classnames classnames.txt

        gla extract bbcnews/data -o news.h5 --backend sentence-transformers --model models/all-MiniLM-L6-v2
    """
    from glacli import extraction, sources

    input_kind = _encoder_class(backend, pretrained).input_kind
    if allow_fewer and shots is None:
        fail("--allow-fewer applies with --shots only")
    dist = extraction.init_distributed(device)
    try:
        rows = sources.open_source(source, split=split, root=None if root is None else str(root),
                                   classnames_file=None if classnames is None else str(classnames),
                                   input_kind=input_kind, download=download)
        if shots is not None:
            rows = sources.select_shots(rows, shots, seed, allow_fewer)
        if dist.is_main:
            for warning in rows.warnings:
                err.print(f"warning: {warning}")
        model_encoder = load_encoder(backend, model, pretrained, dist.device, autocast=autocast)
        options = extraction.ExtractOptions(batch_size=batch_size, workers=workers, dtype=dtype,
                                            commit_rows=commit_every, skip_bad=skip_bad, overwrite=overwrite,
                                            decode_on_device=gpu_decode)
        with _progress() as bar:
            task = bar.add_task("extract", total=None, visible=dist.is_main,
                                unit="img" if input_kind == "image" else input_kind)
            report = extraction.Reporter(message=lambda text: err.print(text, soft_wrap=True),
                                         start=lambda total: bar.update(task, total=total),
                                         advance=lambda n: bar.advance(task, n))
            result = extraction.extract(rows, model_encoder, output, options, dist, report)
    finally:
        dist.close()
    if not dist.is_main:
        return
    summary: dict[str, Any] = {
        "output": str(output), "rows": result.n_rows, "skipped": result.n_skipped, "dim": model_encoder.dim,
        "classes": len(rows.classnames), "resumed_from_row": result.resumed_from, "encoded": result.encoded,
        "seconds": round(result.seconds, 3), "already_complete": result.already_complete,
        f"{rows.input_kind}s_per_second": round(result.encoded / result.seconds, 1) if result.seconds > 0 else None,
        "ranks": dist.world_size,
    }
    if result.n_skipped:
        err.print(f"warning: skipped {result.n_skipped} unreadable images (listed in the file's 'skipped' dataset)")
    _report(summary, as_json, "extract")


@app.command("zeroshot")
def zeroshot_command(
    output: Annotated[Path, typer.Option("-o", "--output", help="Head file to write (.h5).", show_default=False)],
    model: ModelOption,
    pretrained: PretrainedOption = None,
    classnames: Annotated[Path | None, typer.Option(
        "--classnames", help="Class names, one per line or a JSON list of strings.")] = None,
    like: Annotated[Path | None, typer.Option(
        "--like", help="Take the class names (and check the model) from this features file.")] = None,
    templates: Annotated[str, typer.Option(
        "--templates", help="Prompt set: imagenet (80 CLIP prompts), simple, a dataset name (caltech101, "
                            "oxfordpets, stanfordcars, oxfordflowers, food101, fgvcaircraft, sun397, dtd, eurosat, "
                            "ucf101), news (text encoders), or a file with one template per line, '{}' for the "
                            "class name.")] = "imagenet",
    logit_scale: Annotated[str | None, typer.Option(
        "--logit-scale", help="Multiplier of the cosine similarities (default: the model's; CLIP's learnt "
                              "logit_scale.exp(), 100 for sentence-transformers).", show_default=False)] = None,
    device: DeviceOption = "auto",
    backend: BackendOption = DEFAULT_BACKEND,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Build a zero-shot head: prompt-ensembled class text embeddings times CLIP's logit scale.

    weight[c] = normalise(mean over templates of normalise(text(template(c)))) * logit_scale.exp(),
    bias 0, head_type zeroshot. Text encoders use the same formula with logit scale 100.

    Example:

        gla zeroshot --model ViT-B-16 --pretrained openai --like val.h5 --templates imagenet -o zs_head.h5

        gla zeroshot --backend sentence-transformers --model models/all-MiniLM-L6-v2 --like news.h5 \\
            --templates news -o news_head.h5
    """
    from glacli import zeroshot
    from glacli.app import parse_positive_float
    from glacli.classnames import read_classnames
    from glacli.devices import resolve_device

    _encoder_class(backend, pretrained)
    scale_option = None if logit_scale is None else parse_positive_float(logit_scale, "--logit-scale")
    if (classnames is None) == (like is None):
        fail("give exactly one of --classnames FILE or --like FEATURES.h5")
    template_name, template_list = zeroshot.load_templates(templates)
    parents: list[str] = []
    if like is not None:
        with store.read_rows(like, "features") as features:
            names, recorded, parents = features.classnames, features.attrs, [features.gla_id]
        if not names:
            fail("has no class names to build a head for", str(like))
    else:
        names, recorded = read_classnames(classnames), {}
    text_encoder = load_encoder(backend, model, pretrained, resolve_device(device), autocast="off")
    described = text_encoder.describe()
    scale = text_encoder.logit_scale if scale_option is None else scale_option
    if recorded.get("model") not in (None, described["model"]):
        fail(f"was extracted with model {recorded['model']!r}, not {described['model']!r}", str(like))
    if recorded.get("pretrained") not in (None, described["pretrained"]):
        err.print(f"warning: {like} was extracted with pretrained {recorded['pretrained']!r}, "
                  f"this head uses {described['pretrained']!r}", soft_wrap=True)
    with _progress() as bar:
        task = bar.add_task("zeroshot", total=len(names))
        weight = zeroshot.zeroshot_weights(text_encoder.encode_text, names, template_list, scale,
                                           lambda n: bar.advance(task, n))
    attrs = {**described, "templates": template_name, "n_templates": len(template_list), "logit_scale": scale}
    store.write_head(output, store.Head(weight=weight.numpy().astype(np.float32),
                                        bias=np.zeros(len(names), np.float32), classnames=list(names),
                                        head_type="zeroshot", temperature=1.0, attrs=attrs), parents)
    _report({"output": str(output), "classes": len(names), "dim": int(weight.shape[1]),
             "templates": template_name, "n_templates": len(template_list),
             "logit_scale": round(scale, 4)}, as_json, "zeroshot")


def _report(summary: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print_json(summary)
        return
    print_fields(f"gla {title}", [(key.replace("_", " "), str(value)) for key, value in summary.items()
                                  if value is not None])
