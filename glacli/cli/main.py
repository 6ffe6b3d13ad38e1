"""Entry point of the ``gla`` command: the registry of commands, lazy loading, and one-line user errors.

A command's module is imported only when that command runs, so ``gla combine`` never loads torch;
``gla --help`` lists every command from :data:`COMMANDS` without importing any of them.
"""
from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import typer

try:  # recent typer releases carry their own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_exceptions
from typer import rich_utils
from typer.core import TyperCommand

from glacli.base.errors import GlaInputError, one_line
from glacli.cli.app import app, err, output_width

USER_ERROR = 2
HELP_MARGIN = 8
"""Columns around a line of help text: the panel's border and indent."""
DEFAULT_OUT_OF_MEMORY = "use --device cpu"
TERMINAL_HELP_WIDTH = rich_utils.MAX_WIDTH
"""typer's own help width (its ``TERMINAL_WIDTH`` variable, else the terminal's)."""


@dataclass(frozen=True)
class CommandEntry:
    """Where a command lives and how the top-level help lists it."""

    module: str
    """The module of ``glacli.cli.commands`` that registers the command on ``app`` when imported."""
    summary: str
    out_of_memory: str = DEFAULT_OUT_OF_MEMORY
    """What to do when the command runs out of GPU memory, in the words of its own options."""


COMMANDS: dict[str, CommandEntry] = {
    "extract": CommandEntry("extract", "Encode images (or texts) once into a features file.",
                            "the committed rows are kept: rerun with a smaller --batch-size to resume"),
    "zeroshot": CommandEntry("zeroshot", "Build a zero-shot head from class names and prompt templates."),
    "fit": CommandEntry("fit", "Fit a linear-probe head on cached features.",
                        "lower --memory to stream the features from disk, or use --device cpu"),
    "logits": CommandEntry("logits", "Apply a head to features: a logits file."),
    "calibrate": CommandEntry("calibrate", "Temperature scaling of logits, fitted on validation logits."),
    "estimate-prior": CommandEntry("estimate", "Estimate the label prior q of a zero-shot model from its logits."),
    "estimate-target": CommandEntry("estimate_target",
                                    "Estimate the label distribution of an unlabelled set (label shift)."),
    "combine": CommandEntry("combine", "GLA logits, the debiased zero-shot model, or the ensemble baseline."),
    "evaluate": CommandEntry("evaluate", "Compare logits files: accuracies, NLL, ECE and group accuracies."),
    "report": CommandEntry("report", "Aggregate evaluate results into a methods x settings table."),
    "subset": CommandEntry("subset", "Draw a class-balanced few-shot split from a features file."),
    "import": CommandEntry("import_", "Import logits, features, a prior or a head written by another tool."),
    "export": CommandEntry("export", "Write a gla file out for other tools."),
    "info": CommandEntry("info", "Show a gla file's kind, shape, temperatures, method and parents."),
    "interpolate": CommandEntry("interpolate", "WiSE-FT: interpolate two checkpoints or two heads by alpha."),
    "project": CommandEntry("project", "Restrict or max-merge ImageNet logits onto a shift set's classes."),
}
"""Every command of gla, in pipeline order (the order of ``gla --help``)."""
COMMAND_MODULES = {name: entry.module for name, entry in COMMANDS.items()}
"""Command name -> module of ``glacli.cli.commands`` that registers it on ``app`` when imported."""


def main(argv: list[str] | None = None) -> int:
    """Run ``gla``; user errors print ``gla: error: ...`` on stderr and exit with status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    name = args[0] if args and args[0] in COMMANDS else None
    if name is not None:
        register_commands(name)
    command = typer.main.get_command(app)
    for other, entry in COMMANDS.items():  # listed in the help from the registry, not imported
        if other != name:
            command.add_command(TyperCommand(other, help=entry.summary, short_help=entry.summary))
    _show_flags_without_type(command)
    _unwrapped_help_when_piped(command)
    try:
        result = command.main(args=args, prog_name="gla", standalone_mode=False)
    except GlaInputError as exc:
        return _user_error(str(exc), debug)
    except click_exceptions.NoArgsIsHelpError as exc:
        sys.stderr.write((exc.ctx.get_help() if exc.ctx else "") + "\n")
        return USER_ERROR
    except click_exceptions.UsageError as exc:
        where = f"{exc.ctx.info_name}: " if exc.ctx and exc.ctx.parent else ""
        return _user_error(f"{where}{exc.format_message()}", debug)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        return 130
    except FileNotFoundError as exc:
        return _user_error(f"{exc.filename}: no such file or folder", debug)
    except PermissionError as exc:
        return _user_error(f"{exc.filename}: permission denied" if exc.filename
                           else f"permission denied ({one_line(exc)})", debug)
    except Exception as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch's, matched by name: torch may not be imported
            raise
        hint = COMMANDS[name].out_of_memory if name else DEFAULT_OUT_OF_MEMORY
        detail = ". ".join(one_line(exc).split(". ")[:2])  # torch's first two sentences: what it tried to allocate
        return _user_error(f"out of GPU memory ({detail}); {hint}", debug)
    return result if isinstance(result, int) else 0


def register_commands(name: str | None = None) -> None:
    """Import the module of command ``name`` (start-up without torch where it is not needed), or of
    every command (for tests and tools that inspect them all)."""
    modules = {COMMAND_MODULES[name]} if name is not None else set(COMMAND_MODULES.values())
    for module in sorted(modules):
        importlib.import_module(f"glacli.cli.commands.{module}")


def _show_flags_without_type(group: Any) -> None:
    """A flag takes no value, so the help shows no ``<bool>`` type for it (``--json``, ``--help``)."""
    for command in [group, *getattr(group, "commands", {}).values()]:
        context = command.context_class(command, info_name=command.name,
                                        help_option_names=app.info.context_settings["help_option_names"])
        for param in [*command.params, command.get_help_option(context)]:
            if param is not None and getattr(param, "is_flag", False):
                param.metavar = ""


def _unwrapped_help_when_piped(group: Any) -> None:
    """Help piped or redirected is wide enough for its longest example line (indented in the docstring), so
    an example is never broken mid-command; on a terminal, or with ``COLUMNS`` set, rich wraps it there."""
    if output_width() is None:
        rich_utils.MAX_WIDTH = TERMINAL_HELP_WIDTH
        return
    helps = [inspect.cleandoc(command.help or "") for command in [group, *getattr(group, "commands", {}).values()]]
    longest = max((len(line) for text in helps for line in text.splitlines() if line.startswith(" ")), default=0)
    rich_utils.MAX_WIDTH = max(80, longest + HELP_MARGIN)


def _user_error(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    sys.stderr.write(f"gla: error: {message}\n")
    return USER_ERROR


def run() -> None:
    sys.exit(main())
