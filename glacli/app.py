"""The typer application and what every command shares: consoles, option parsing, output.

Command modules under ``glacli/commands/`` register themselves on :data:`app`; they parse
options, call the pure math and the store, and report. No math lives there.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from glacli.errors import GlaInputError

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


def fail(message: str, path: str | None = None) -> None:
    """Raise the one-line user error every command reports the same way."""
    raise GlaInputError(message, path)


def parse_positive_float(value: str | float, option: str) -> float:
    return _positive_number(value, f"{option}: expected a positive number, got {value!r}")


def parse_choice_or_float(value: str, choices: tuple[str, ...], option: str) -> str | float:
    """Options like ``--temperature nll|confidence|FLOAT``."""
    if value in choices:
        return value
    return _positive_number(value, f"{option}: expected {', '.join(choices)} or a positive number, got {value!r}")


def _positive_number(value: str | float, message: str) -> float:
    """``value`` as a finite positive float, else the user error ``message``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        fail(message)
    if not (math.isfinite(number) and number > 0):
        fail(message)
    return number


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


def progress(transient: bool = False) -> Progress:
    """A rich progress bar on stderr with rate-friendly columns."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=err, transient=transient)

