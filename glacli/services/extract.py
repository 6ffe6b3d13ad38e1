"""``extract``: a data source encoded once into a features file, resumable and shardable.

Every option is checked here first, before a source is listed or a model is loaded; then the
rows come from :mod:`glacli.io.sources`, the model from :mod:`glacli.io.encoders`, and the pipeline
(:mod:`glacli.io.extraction`) commits, resumes and merges.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glacli.base.errors import GlaInputError
from glacli.base.types import Reporter
from glacli.base.validation import renamed_classnames_note, require_choice, require_count
from glacli.io import extraction
from glacli.io import sources
from glacli.io.encoders import AUTOCAST_CHOICES, BACKENDS, encoder_class, load_encoder
from glacli.io.encoders.base import Encoder
from glacli.io.encoders.prompts import PromptTemplate, parse_label_words
from glacli.io.extraction.distributed import init_distributed
from glacli.io.outputs import check_output_path
from glacli.io.rowfile import read_rows


def check_backend(backend: str, pretrained: str | None) -> type[Encoder]:
    """The backend's encoder class, once ``--backend`` and ``--pretrained`` agree with it (before any
    model is loaded, so a wrong option costs nothing)."""
    if backend not in BACKENDS:
        raise GlaInputError(f"--backend: unknown backend {backend!r} (known: {', '.join(sorted(BACKENDS))})")
    cls = encoder_class(backend)
    if cls.needs_pretrained and not (pretrained or "").strip():
        raise GlaInputError(f"--pretrained: the {backend} backend needs weights: an open_clip tag, an hf-hub: "
                            f"name or a checkpoint path")
    if not cls.needs_pretrained and pretrained:
        raise GlaInputError(f"--pretrained does not apply to the {backend} backend (--model names the model and "
                            f"its weights)")
    return cls


@dataclass(frozen=True)
class PromptOptions:
    """How a prompted backend (causal-lm) reads a text: ``--prompt``, ``--max-tokens``, ``--label-words``."""

    template: str | None = None
    """The prompt with ``{text}`` and ``{labels}`` (None: the backend's default prompt)."""
    max_tokens: int = 0
    """Tokens of the text kept (0: all)."""
    label_words: str | None = None
    """A file or ``class=word,...`` (None: the class names)."""

    def given(self) -> list[str]:
        return [name for name, value in (("--prompt", self.template), ("--max-tokens", self.max_tokens),
                                         ("--label-words", self.label_words)) if value]


def check_prompt_options(encoder_cls: type[Encoder], prompt: PromptOptions) -> PromptOptions:
    """``prompt``, once it applies to the backend and its values are sound (before any model is loaded)."""
    if not encoder_cls.reads_prompt:
        if prompt.given():
            raise GlaInputError(f"{prompt.given()[0]} applies to the causal-lm backend, not to {encoder_cls.backend}")
        return prompt
    require_count(prompt.max_tokens, "--max-tokens", minimum=0)
    PromptTemplate.parse(prompt.template)
    return prompt


def extract(source: str, output: Path, *, model: str, pretrained: str | None, backend: str,
            options: extraction.ExtractOptions, split: str | None = None, root: Path | None = None,
            classnames: Path | None = None, shots: int | None = None, seed: int = 0, allow_fewer: bool = False,
            rows_of: Path | None = None, device: str = "auto", autocast: str = "fp16", download: bool = False,
            base_pretrained: str | None = None, prompt: PromptOptions | None = None,
            reporter: Reporter = Reporter()) -> dict[str, Any] | None:
    """Encode the rows of ``source`` (``shots`` per class, or the rows that the features file
    ``rows_of`` lists, when given) into ``output``, as ``options.augment_views`` views each when
    set; returns the summary of ``gla extract --json`` (None on the ranks of a torchrun job other
    than rank 0). ``base_pretrained``: the weights that complete a checkpoint holding only the
    image tower (:mod:`glacli.io.checkpoints`); ``prompt`` applies to the backends that read rows
    through a prompt (causal-lm)."""
    encoder_cls = check_backend(backend, pretrained)
    input_kind = encoder_cls.input_kind
    prompt = check_prompt_options(encoder_cls, prompt or PromptOptions())
    if base_pretrained and backend != "open_clip":
        raise GlaInputError(f"--base-pretrained applies to the open_clip backend, not {backend}")
    require_choice(autocast, AUTOCAST_CHOICES, "--autocast")
    if allow_fewer and shots is None:
        raise GlaInputError("--allow-fewer applies with --shots only")
    if options.augment_views and input_kind != "image":
        raise GlaInputError(f"--augment-views applies to images; the {backend} backend reads {input_kind}s")
    if rows_of is not None and shots is not None:
        raise GlaInputError("give --shots or --rows-of, not both")
    check_output_path(output)
    wanted = None if rows_of is None else _ids_of(rows_of)
    dist = init_distributed(device)
    try:
        rows = sources.open_source(source, split=split, root=None if root is None else str(root),
                                   classnames_file=None if classnames is None else str(classnames),
                                   input_kind=input_kind, download=download)
        if shots is not None:
            rows = sources.select_shots(rows, shots, seed, allow_fewer)
        if wanted is not None:
            rows = sources.select_ids(rows, wanted, str(rows_of))
        if dist.is_main:
            for warning in rows.warnings:
                reporter.warning(warning)
            if classnames is not None and (note := renamed_classnames_note(rows.classnames)):
                reporter.message(f"note: {note}")
        backend_options: dict[str, Any] = {} if not encoder_cls.reads_prompt else {
            "prompt": prompt.template, "max_tokens": prompt.max_tokens,
            "label_words": parse_label_words(prompt.label_words, rows.classnames)}
        if base_pretrained:
            backend_options["base_pretrained"] = base_pretrained
        encoder = load_encoder(backend, model, pretrained, dist.device, autocast=autocast, **backend_options)
        result = extraction.extract(rows, encoder, output, options, dist, reporter)
    finally:
        dist.close()
    if not dist.is_main:
        return None
    if result.n_skipped:
        reporter.warning(f"skipped {result.n_skipped} unreadable images (listed in the file's 'skipped' dataset)")
    return {
        "output": str(output), "rows": result.n_rows, "skipped": result.n_skipped, "dim": encoder.dim,
        "classes": len(rows.classnames), "resumed_from_row": result.resumed_from, "encoded": result.encoded,
        "seconds": round(result.seconds, 3), "already_complete": result.already_complete,
        f"{rows.input_kind}s_per_second": round(result.encoded / result.seconds, 1) if result.seconds > 0 else None,
        "ranks": dist.world_size, "augment_views": options.augment_views,
    }


def _ids_of(path: Path) -> list[str]:
    """The image ids a features file lists (``--rows-of``); a file of augmented views is refused."""
    with read_rows(path, "features") as f:
        if f.attrs.get("augment_views"):
            raise GlaInputError("--rows-of: holds augmented views; give the features file of the images", path)
        return f.ids()
