"""The typer application and what every command shares: consoles, option types, parsing, output, progress.

Command modules under ``glacli/cli/commands/`` register themselves on :data:`app`; each parses its
options with the shared types below, calls one service of :mod:`glacli.services`, and reports
what it returns. Progress and warnings reach the console through :func:`reporting`, so services
never import rich.
"""
from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from glacli.base.errors import GlaInputError
from glacli.base.types import Reporter
from glacli.base.validation import require_positive
from glacli.io.encoders import BACKENDS

app = typer.Typer(
    name="gla",
    help="Generalized Logit Adjustment for CLIP classifiers: extract features once, then fit heads, "
         "estimate the zero-shot label prior and combine logits from cached HDF5 files.\n\n"
         "Add --debug anywhere to see a traceback on errors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _group() -> None:
    """Keeps ``gla`` a command group even when only the invoked command's module is loaded."""


out = Console(highlight=False)
"""Tables and human-readable results (stdout)."""
err = Console(stderr=True, highlight=False)
"""Progress, warnings and errors (stderr), so stdout stays clean for --json and pipes."""


# --------------------------------------------------------------------------- shared options


DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."
DeviceOption = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ModelOption = Annotated[str, typer.Option(
    "--model", help="open_clip: an architecture (e.g. ViT-B-16) or the path of a model-config .json; "
                    "sentence-transformers: a model folder or a hub name; causal-lm: a model folder or a .gguf "
                    "file.", show_default=False)]
PretrainedOption = Annotated[str | None, typer.Option(
    "--pretrained", help="open_clip weights: a tag (openai, laion2b_s34b_b79k), an hf-hub: name, or a local "
                         "checkpoint path (sentence-transformers takes none).", show_default=False)]
BackendOption = Annotated[str, typer.Option(
    "--backend", "--encoder", help=f"Encoder backend: {', '.join(sorted(BACKENDS))}.")]
PromptOption = Annotated[str | None, typer.Option(
    "--prompt", metavar="TEMPLATE",
    help="causal-lm: the prompt, with {text} (the text) and {labels} (the label words joined with ', '); "
         "\\n is a newline. Default: 'Classify the text into one of: {labels}.\\n\\nText: {text}\\nAnswer:'.",
    show_default=False)]
LabelWordsOption = Annotated[str | None, typer.Option(
    "--label-words", metavar="FILE|class=word,...",
    help="causal-lm: the word of each class (default: its class name): a file of class=word lines or "
         "class=word,class=word.", show_default=False)]
"""The encoder options of ``extract`` and ``zeroshot``."""


def output_option(metavar: str, what: str) -> Any:
    """The ``-o/--output`` option of a command that writes ``what`` (a required path)."""
    return Annotated[Path, typer.Option("-o", "--output", metavar=metavar, help=f"{what} to write.",
                                        show_default=False)]


# --------------------------------------------------------------------------- parsing


def fail(message: str, path: str | Path | None = None) -> None:
    """Raise the one-line user error every command reports the same way."""
    raise GlaInputError(message, path)


def parse_choice_or_float(value: str, choices: tuple[str, ...], option: str) -> str | float:
    """Options like ``--temperature nll|confidence|FLOAT``."""
    if value in choices:
        return value
    try:
        return require_positive(value, option)
    except GlaInputError:
        fail(f"{option}: expected {', '.join(choices)} or a positive number, got {value!r}")


# --------------------------------------------------------------------------- output


def print_json(payload: Any) -> None:
    """Machine-readable output on stdout (one JSON document)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def print_fields(title: str, fields: list[tuple[str, str]]) -> None:
    """A two-column summary table (name, value): the one look of every command's result summary."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in fields:
        table.add_row(name, value)
    out.print(table)


def print_summary(summary: dict[str, Any], json_output: bool, title: str) -> None:
    """A flat summary as JSON (``--json``), or as the two-column table of :func:`print_fields`."""
    if json_output:
        print_json(summary)
        return
    print_fields(title, [(key.replace("_", " "), str(value)) for key, value in summary.items() if value is not None])


def say(text: str) -> None:
    """A one-line note on stderr (what was written, what was converted)."""
    err.print(escape(text), soft_wrap=True)


def warn(text: str) -> None:
    """A warning on stderr: something the user should look at, though the command went on."""
    err.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)


class RateColumn(ProgressColumn):
    """Rows per second, in the task's ``unit`` (img/s, text/s); empty for a task without one."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit")
        return Text("" if speed is None or unit is None else f"{speed:,.0f} {unit}/s")


def progress(transient: bool = True) -> Progress:
    """The one progress bar of gla, on stderr; ``transient`` ones vanish when done, so errors stay one
    line and the summary carries the result."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    RateColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err,
                    transient=transient)


@contextlib.contextmanager
def reporting(transient: bool = True) -> Iterator[Reporter]:
    """A :class:`~glacli.base.types.Reporter` for a service: notes and warnings on stderr, progress on one bar
    (shown from the first count on, so a command that stops early prints its error line alone)."""
    bar = progress(transient)
    tasks: list[Any] = []

    def start(description: str, total: int | None, unit: str | None = None) -> None:
        if not tasks:
            bar.start()
        tasks.append(bar.add_task(description, total=total, unit=unit))

    def advance(n: int = 1, description: str | None = None) -> None:
        bar.update(tasks[-1], advance=n, **({} if description is None else {"description": description}))

    try:
        yield Reporter(message=say, warning=warn, start=start, advance=advance)
    finally:
        if tasks:
            bar.stop()
