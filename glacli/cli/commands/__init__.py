"""One module per ``gla`` command: a thin typer adapter that parses options, calls one service of
:mod:`glacli.services`, and reports what it returns (``glacli.cli.main.COMMANDS`` lists them)."""
