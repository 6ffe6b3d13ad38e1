"""Prompts of the causal-lm backend: the template and the label words (no torch, no model).

:class:`PromptTemplate` renders a text into ``--prompt``; :func:`parse_label_words` reads
``--label-words``. The services check both before a model is loaded.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from glacli.base.errors import GlaInputError, one_line

DEFAULT_PROMPT = "Classify the text into one of: {labels}.\n\nText: {text}\nAnswer:"
"""The prompt when ``--prompt`` is not given."""
TEXT_FIELD, LABELS_FIELD = "{text}", "{labels}"


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with one ``{text}`` and any number of ``{labels}``; other braces are plain text.

    The two-character escapes ``\\n`` and ``\\t`` stand for a newline and a tab, so that a prompt
    typed at a shell means what it shows.
    """

    template: str

    @classmethod
    def parse(cls, template: str | None) -> PromptTemplate:
        text = DEFAULT_PROMPT if template is None else template.replace("\\n", "\n").replace("\\t", "\t")
        if text.count(TEXT_FIELD) != 1:
            raise GlaInputError(f"--prompt: the template must hold {TEXT_FIELD} exactly once "
                                f"(it holds it {text.count(TEXT_FIELD)} times): {template!r}")
        return cls(text)

    def render(self, text: str, labels: str) -> str:
        before, after = self.template.split(TEXT_FIELD)
        return before.replace(LABELS_FIELD, labels) + text.strip() + after.replace(LABELS_FIELD, labels)

    def tail(self, labels: str) -> str:
        """What follows ``{text}``: the context in which the label word is the next token."""
        return self.template.split(TEXT_FIELD)[1].replace(LABELS_FIELD, labels)


def parse_label_words(spec: str | None, classnames: Sequence[str], defaults: Sequence[str] | None = None
                      ) -> list[str]:
    """The label word of each class: its word in ``defaults`` (else its class name) unless ``spec``
    maps it to another word.

    ``spec`` is a file (lines ``class=word``; blank lines and ``#`` comments skipped) or
    ``class=word,class=word``; a class it does not name keeps its default, a name it gives that is
    not a class is refused.
    """
    defaults = [str(c) for c in (classnames if defaults is None else defaults)]
    if spec is None:
        return defaults
    path = Path(spec).expanduser()
    where: str | None = None
    if path.is_file():
        try:
            entries = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise GlaInputError(f"cannot read label words ({one_line(exc)})", path) from exc
        entries, where = [e for e in entries if e and not e.startswith("#")], str(path)
    elif "=" in spec:
        entries = [e.strip() for e in spec.split(",") if e.strip()]
    else:
        raise GlaInputError(f"--label-words: no such file, and not a list class=word,...: {spec!r}")
    mapping: dict[str, str] = {}
    for entry in entries:
        name, sep, word = (part.strip() for part in entry.partition("="))
        if not sep or not name or not word:
            raise GlaInputError(f"--label-words: {entry!r} is not class=word", where)
        if name not in classnames:
            raise GlaInputError(f"--label-words: {name!r} is not a class (classes: {', '.join(classnames)})", where)
        if name in mapping:
            raise GlaInputError(f"--label-words: class {name!r} is given twice", where)
        mapping[name] = word
    return [mapping.get(str(c), word) for c, word in zip(classnames, defaults)]
