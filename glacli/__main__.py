"""``python -m glacli`` runs the gla command."""
from glacli.cli import run

run()
