"""``gla extract``: a data source (images or texts) -> a features file, through an encoder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from glacli.base.validation import FEATURE_DTYPES
from glacli.cli.app import BackendOption, DeviceOption, JsonFileOutput, JsonOutput, LabelWordsOption, ModelOption
from glacli.cli.app import PretrainedOption, PromptOption
from glacli.cli.app import app, output_option, print_summary, reporting
from glacli.io.encoders import AUTOCAST_CHOICES, DEFAULT_BACKEND
from glacli.io.sources import describe_layouts

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)

Output = output_option("FEATURES.h5", "Features file")


@app.command("extract")
def extract_command(
    source: Annotated[str, typer.Argument(help=f"One of: {describe_layouts()}", metavar="SOURCE",
                                          show_default=False)],
    output: Output,
    model: ModelOption,
    pretrained: PretrainedOption = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="Split of a CoOp split JSON (train, val or test) or of a torchvision: dataset.")] = None,
    root: Annotated[Path | None, typer.Option(
        "--root", help="Folder that relative manifest/split paths start from (default: the manifest's folder); "
                       "for torchvision: sources, the data folder.")] = None,
    classnames: Annotated[Path | None, typer.Option(
        "--classnames", "--imagenet-classes",
        help="Class names, one per line or a JSON list: names integer labels, or fixes the class order (ImageNet "
             "shift sources: ImageNet's 1000 names, by default CLIP's).")] = None,
    shots: Annotated[int | None, typer.Option(
        "--shots", help="Keep K images per class: the rows 'gla subset --shots K --seed S' would take.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --shots selection and of the augmented views.")
                    ] = 0,
    allow_fewer: Annotated[bool, typer.Option(
        "--allow-fewer", help="With --shots, a class with fewer images keeps all it has instead of stopping with "
                              "an error.")] = False,
    rows_of: Annotated[Path | None, typer.Option(
        "--rows-of", metavar="FEATURES.h5",
        help="Keep only the images whose ids this features file lists (e.g. the K-shot train.h5 of gla subset).")
    ] = None,
    augment_views: Annotated[int, typer.Option(
        "--augment-views", metavar="K",
        help="Encode K augmented views of each image (random resized crop and flip, seeded by --seed; ids "
             "ID#v0 ... ID#v<K-1>) instead of the image: training data for gla fit --method prompt.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 128,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes decoding images.")
                       ] = DEFAULT_WORKERS,
    device: DeviceOption = "auto",
    dtype: Annotated[str, typer.Option(
        "--dtype", help=f"Stored feature precision: {' or '.join(FEATURE_DTYPES)}.")] = "float16",
    autocast: Annotated[str, typer.Option(
        "--autocast", help=f"Mixed precision on CUDA: {', '.join(AUTOCAST_CHOICES)}.")] = "fp16",
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
    base_pretrained: Annotated[str | None, typer.Option(
        "--base-pretrained", metavar="TAG_OR_PATH",
        help="With a checkpoint that holds only the image tower (visual.*): the weights of the rest (text "
             "tower, logit scale), e.g. the zero-shot model's tag openai.")] = None,
    prompt: PromptOption = None,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", help="causal-lm: keep the first N tokens of each text (the prompt around it is kept "
                             "whole); 0 keeps all.")] = 0,
    label_words: LabelWordsOption = None,
    json_output: JsonOutput = False,
    json_out: JsonFileOutput = None,
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

        gla extract data/imagenet/val -o val_ft.h5 --model ViT-B-16 --pretrained checkpoint_10.pt \\
            --base-pretrained openai

        gla extract bbcnews/data -o news_llm.h5 --backend causal-lm --model SmolLM2-135M-Instruct.Q4_1.gguf \\
            --prompt 'Classify the news article into one of: {labels}.\\n\\nArticle: {text}\\nTopic:' \\
            --label-words sports=sport,tech=technology --max-tokens 160 --dtype float32

        gla extract data/imagenet/train --rows-of train_16shot.h5 --augment-views 10 --seed 1 \\
            -o train_16shot_views.h5 --model RN50 --pretrained openai
    """
    from glacli.io.extraction import ExtractOptions  # torch: imported when a model is needed, not for the help
    from glacli.services.extract import PromptOptions, extract

    options = ExtractOptions(batch_size=batch_size, workers=workers, dtype=dtype, commit_rows=commit_every,
                             skip_bad=skip_bad, overwrite=overwrite, decode_on_device=gpu_decode,
                             augment_views=augment_views, seed=seed)
    with reporting() as reporter:
        summary = extract(source, output, model=model, pretrained=pretrained, backend=backend, options=options,
                          split=split, root=root, classnames=classnames, shots=shots, seed=seed,
                          allow_fewer=allow_fewer, rows_of=rows_of, device=device, autocast=autocast,
                          download=download, base_pretrained=base_pretrained, reporter=reporter,
                          prompt=PromptOptions(template=prompt, max_tokens=max_tokens, label_words=label_words))
    if summary is not None:
        print_summary(summary, json_output, "gla extract", json_out)
