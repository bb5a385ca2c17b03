"""Datasets register themselves by name in :data:`mflow_cli.registry.DATASETS` on import."""

from . import spiral  # noqa: F401
from .base import Dataset, Simulator
from .images import ImageManifold  # noqa: F401

__all__ = ["Dataset", "Simulator"]
