"""``python -m mflow_cli`` runs the CLI."""

from .cli import run

run()
