"""Evaluators, one per model family, registered in :data:`mflow_cli.registry.EVALUATORS`."""

from . import (
    manifold,  # noqa: F401
    vq_flow,  # noqa: F401
)
