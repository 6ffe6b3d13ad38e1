"""Zero-shot heads: prompt templates (a registry of data files) and the head weights built from them.

The weight of class c is ``normalise(mean_t normalise(text(template_t(c)))) * logit_scale``: the
prompt ensemble of CLIP, scaled so that ``features @ weight.T`` are CLIP's zero-shot logits.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from glacli.errors import GlaInputError

PLACEHOLDER = "{}"
TEXTS_PER_BATCH = 1024


def _template_files() -> dict[str, str]:
    """Built-in set name -> file name, from the data files shipped in ``glacli/templates``."""
    folder = resources.files("glacli") / "templates"
    return {Path(entry.name).stem: entry.name for entry in folder.iterdir() if entry.name.endswith(".txt")}


def _aliases() -> dict[str, str]:
    return json.loads((resources.files("glacli") / "templates" / "aliases.json").read_text(encoding="utf-8"))


def template_set_names() -> list[str]:
    """The built-in template sets: ``imagenet``, ``simple`` and the per-dataset sets (with aliases)."""
    return sorted({*_template_files(), *_aliases()})


def _normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_templates(name_or_file: str) -> tuple[str, list[str]]:
    """A built-in set (by name, case and punctuation ignored: ``OxfordPets`` = ``oxford_pets``) or a
    file with one template per line, each with one ``{}`` where the class name goes.

    Returns the name to record (the set name, or the file's absolute path) and the templates.
    """
    path = Path(name_or_file)
    if path.is_file():
        return str(path.resolve()), _read_template_file(path, path)
    key = _normalise_name(name_or_file)
    key = _aliases().get(key, key)
    files = _template_files()
    if key not in files:
        raise GlaInputError(f"--templates: {name_or_file!r} is neither a file nor a built-in set "
                            f"({', '.join(template_set_names())})")
    text = (resources.files("glacli") / "templates" / files[key]).read_text(encoding="utf-8")
    return key, _parse_templates(text, files[key])


def _read_template_file(path: Path, where: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GlaInputError(f"templates are not UTF-8 text ({exc.reason})", where) from exc
    return _parse_templates(text, where)


def _parse_templates(text: str, where: str | Path) -> list[str]:
    templates: list[str] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        template = line.strip()
        if not template:
            continue
        if template.count(PLACEHOLDER) != 1:
            raise GlaInputError(f"line {line_no}: a template needs exactly one '{{}}' for the class name, "
                                f"got {template!r}", where)
        templates.append(template)
    if not templates:
        raise GlaInputError("no templates in file", where)
    return templates


def prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every class name, class-major: [c0 t0, c0 t1, ..., c1 t0, ...]."""
    return [template.replace(PLACEHOLDER, name) for name in classnames for template in templates]


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
