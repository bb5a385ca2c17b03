"""Datasets register themselves by name in :data:`mflow_cli.registry.DATASETS` on import."""

from . import (
    circle,  # noqa: F401
    images_standard,  # noqa: F401
    sphere,  # noqa: F401
    spiral,  # noqa: F401
    toy3d,  # noqa: F401
)
from .base import Dataset, Simulator
from .images import ImageManifold  # noqa: F401

__all__ = ["Dataset", "Simulator"]
