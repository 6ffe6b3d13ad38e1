"""The typer application and what every command shares: consoles, option types, parsing, output, progress.

Command modules under ``glacli/cli/commands/`` register themselves on :data:`app`; each parses its
options with the shared types below, calls one service of :mod:`glacli.services`, and reports
what it returns. Progress and warnings reach the console through :func:`reporting`, so services
never import rich.
"""
from __future__ import annotations

import contextlib
import json
import os
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

from glacli import __version__
from glacli.base.errors import GlaInputError
from glacli.base.types import Reporter
from glacli.base.validation import require_positive
from glacli.io.encoders import BACKENDS
from glacli.io.outputs import check_output_path, write_text_atomic

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


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"gla {__version__}\n")
        raise typer.Exit()


@app.callback()
def _group(version: Annotated[bool, typer.Option("--version", help="Print gla's version and exit.",
                                                 callback=_print_version, is_eager=True)] = False) -> None:
    """Keeps ``gla`` a command group even when only the invoked command's module is loaded."""


UNWRAPPED = 10_000
"""The width of output that goes to a pipe or a file: lines are not wrapped (a table keeps its own width)."""


def output_width() -> int | None:
    """``None`` (rich's own choice: the terminal's width, or ``COLUMNS``) on a terminal or when ``COLUMNS`` is
    set; otherwise :data:`UNWRAPPED`, so that piped or redirected output is not wrapped at 80 columns."""
    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return None
    return UNWRAPPED


out = Console(highlight=False, width=output_width())
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
    """The ``-o/--output`` option of a command that writes ``what`` (a required path), checked when parsed."""
    return Annotated[Path, typer.Option("-o", "--output", metavar=metavar, help=f"{what} to write.",
                                        show_default=False, callback=_check_output)]


def output_path_option(name: str, metavar: str, help: str) -> Any:
    """Any other output option (``--plot``, ``--val-out``): an optional path, checked when parsed."""
    return Annotated[Path | None, typer.Option(name, metavar=metavar, help=help, show_default=False,
                                               callback=_check_output)]


def _check_output(value: Path | None) -> Path | None:
    """Every output of a command is checked as soon as it is parsed, before any input is read: a folder that
    does not exist or cannot be written, a directory given as a file. (Outputs that must differ from each
    other or from an input are compared by the service, which knows their roles.)"""
    if value is None or str(value) == "-":
        return value
    check_output_path(value)
    return value


JsonFileOutput = Annotated[Path | None, typer.Option(
    "--json-out", metavar="OUT.json", help="Write the result as JSON to this file.", callback=_check_output,
    show_default=False)]
"""The JSON convention of every command: ``--json`` prints JSON on stdout, ``--json-out FILE`` writes it."""


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


def emit_json(payload: Any, json_output: bool, json_out: Path | None) -> bool:
    """The JSON convention of every command: ``--json-out FILE`` writes the result as JSON (atomically),
    ``--json`` prints it on stdout instead of the human-readable summary. True when it was printed."""
    if json_out is not None:
        write_text_atomic(json_out, json.dumps(payload, indent=2, default=_json_default) + "\n")
        say(f"wrote {json_out}")
    if json_output:
        print_json(payload)
    return json_output


def print_fields(title: str, fields: list[tuple[str, str]]) -> None:
    """A two-column summary table (name, value): the one look of every command's result summary."""
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in fields:
        table.add_row(name, value)
    out.print(Text(title, style="italic"), soft_wrap=True)  # a long path is never broken to the table's width
    out.print(table)


def print_summary(summary: dict[str, Any], json_output: bool, title: str, json_out: Path | None = None) -> None:
    """A flat summary as JSON (``--json``, ``--json-out``), or as the two-column table of :func:`print_fields`."""
    if emit_json(summary, json_output, json_out):
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
