"""``python -m glacli`` runs the gla command."""
from glacli.cli.main import run

run()
