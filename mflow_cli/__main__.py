"""``python -m mflow_cli`` runs the CLI."""

from .app.cli import run

run()
