"""Entry point of the ``gla`` command: registers the commands and turns user errors into one line."""
from __future__ import annotations

import sys
import traceback

import typer

try:  # recent typer releases carry their own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_exceptions

from glacli.app import app, err
from glacli.errors import GlaInputError

# Each module registers its commands on ``app`` when imported.
from glacli.commands import combine, estimate, evaluate, extract, interchange, probe, report, subset  # noqa: F401,E402

USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    """Run ``gla``; user errors print ``gla: error: ...`` on stderr and exit with status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
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
    return result if isinstance(result, int) else 0


def _user_error(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    sys.stderr.write(f"gla: error: {message}\n")
    return USER_ERROR


def run() -> None:
    sys.exit(main())
