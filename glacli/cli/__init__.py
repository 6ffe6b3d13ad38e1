"""The command line: the ``gla`` entry point (:mod:`~glacli.cli.main`), one thin typer module per
command (:mod:`~glacli.cli.commands`) and what the commands share (:mod:`~glacli.cli.app`)."""
