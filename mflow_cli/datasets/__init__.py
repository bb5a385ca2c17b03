"""Datasets register themselves by name in :data:`mflow_cli.registry.DATASETS` on import."""

from . import spiral  # noqa: F401
from . import images  # noqa: F401
from .base import Dataset, Simulator

__all__ = ["Dataset", "Simulator"]
