"""Plotters, one per model family, registered in :data:`mflow_cli.registry.PLOTTERS`."""

from . import (
    flow_vae,  # noqa: F401
    manifold,  # noqa: F401
    vq_flow,  # noqa: F401
)
