"""Entry point of the ``gla`` command: registers the commands and turns user errors into one line."""
from __future__ import annotations

import sys
import traceback

import click
import typer

from glacli.app import app, err
from glacli.errors import GlaInputError

# Each module registers its commands on ``app`` when imported.
from glacli.commands import combine, estimate, evaluate, extract, interchange, report, subset  # noqa: F401,E402

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
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        return USER_ERROR
    except click.UsageError as exc:
        where = f"gla {exc.ctx.info_name}: " if exc.ctx and exc.ctx.parent else "gla: "
        return _user_error(f"{where}{exc.format_message()}".removeprefix("gla: "), debug)
    except click.exceptions.Abort:
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
