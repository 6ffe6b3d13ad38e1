"""Prompt templates as data: one ``.txt`` file per set in this folder, one template per line.

Each template holds one ``{}`` where the class name goes. The set names are the file stems
(``imagenet``: CLIP's 80 prompts, ``simple``, one set per CoOp dataset, ``news`` for text
encoders) plus the aliases of ``aliases.json`` (``dtd`` -> ``describabletextures``); ``gla
zeroshot --help`` lists them from here. A new set is a new file.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from glacli.base.errors import GlaInputError
from glacli.base.types import PROMPT_PLACEHOLDER

_FOLDER = resources.files("glacli.io.templates")


def _set_files() -> dict[str, str]:
    """Built-in set name -> file name."""
    return {Path(entry.name).stem: entry.name for entry in _FOLDER.iterdir() if entry.name.endswith(".txt")}


def _aliases() -> dict[str, str]:
    return json.loads((_FOLDER / "aliases.json").read_text(encoding="utf-8"))


def template_set_names() -> list[str]:
    """The built-in template sets and their aliases, sorted."""
    return sorted({*_set_files(), *_aliases()})


def _normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_templates(name_or_file: str) -> tuple[str, list[str]]:
    """A built-in set (by name, case and punctuation ignored: ``OxfordPets`` = ``oxford_pets``) or a
    file with one template per line.

    Returns the name to record (the set name, or the file's absolute path) and the templates.
    """
    path = Path(name_or_file)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise GlaInputError(f"templates are not UTF-8 text ({exc.reason})", path) from exc
        return str(path.resolve()), _parse(text, path)
    key = _normalise_name(name_or_file)
    key = _aliases().get(key, key)
    files = _set_files()
    if key not in files:
        raise GlaInputError(f"--templates: {name_or_file!r} is neither a file nor a built-in set "
                            f"({', '.join(template_set_names())})")
    return key, _parse((_FOLDER / files[key]).read_text(encoding="utf-8"), files[key])


def _parse(text: str, where: str | Path) -> list[str]:
    templates: list[str] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        template = line.strip()
        if not template:
            continue
        if template.count(PROMPT_PLACEHOLDER) != 1:
            raise GlaInputError(f"line {line_no}: a template needs exactly one '{{}}' for the class name, "
                                f"got {template!r}", where)
        templates.append(template)
    if not templates:
        raise GlaInputError("no templates in file", where)
    return templates
