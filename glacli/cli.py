"""Entry point of the ``gla`` command: registers the commands and turns user errors into one line."""
from __future__ import annotations

import importlib
import sys
import traceback

import typer

try:  # recent typer releases carry their own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_exceptions

from glacli.app import app, err
from glacli.errors import GlaInputError, one_line

USER_ERROR = 2
COMMAND_MODULES = {
    "calibrate": "probe", "combine": "combine", "estimate-prior": "estimate", "evaluate": "evaluate",
    "export": "interchange", "extract": "extract", "fit": "probe", "import": "interchange", "info": "info",
    "logits": "probe", "report": "report", "subset": "subset", "zeroshot": "extract",
}
"""Command name -> module of ``glacli.commands`` that registers it on ``app`` when imported."""
OUT_OF_MEMORY_HINTS = {
    "extract": "the committed rows are kept: rerun with a smaller --batch-size to resume",
    "zeroshot": "use --device cpu",
    "fit": "lower --memory to stream the features from disk, or use --device cpu",
    "estimate-prior": "use --device cpu",
    "evaluate": "use --device cpu",
}
"""What to do when a command runs out of GPU memory (the message names the command's own options)."""


def main(argv: list[str] | None = None) -> int:
    """Run ``gla``; user errors print ``gla: error: ...`` on stderr and exit with status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    register_commands(args[0] if args else None)
    command = typer.main.get_command(app)
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
        return _user_error(f"{exc.filename}: permission denied", debug)
    except Exception as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch's, matched by name: torch may not be imported
            raise
        hint = OUT_OF_MEMORY_HINTS.get(args[0] if args else "", "use --device cpu")
        detail = ". ".join(one_line(exc).split(". ")[:2])  # torch's first two sentences: what it tried to allocate
        return _user_error(f"out of GPU memory ({detail}); {hint}", debug)
    return result if isinstance(result, int) else 0


def register_commands(name: str | None = None) -> None:
    """Import the module of command ``name`` only (start-up without torch where it is not needed),
    or every command module for help, listings and unknown names."""
    modules = {COMMAND_MODULES[name]} if name in COMMAND_MODULES else set(COMMAND_MODULES.values())
    for module in sorted(modules):
        importlib.import_module(f"glacli.commands.{module}")


def _user_error(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    sys.stderr.write(f"gla: error: {message}\n")
    return USER_ERROR


def run() -> None:
    sys.exit(main())
