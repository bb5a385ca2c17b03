"""Scripts that reproduce the papers' comparisons from trained runs (``python -m mflow_cli.experiments.NAME``)."""
