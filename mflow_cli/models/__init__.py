"""Model families register their kinds in :data:`mflow_cli.registry.MODELS` on import."""

from . import manifold_flow  # noqa: F401
from .base import Model, variant

__all__ = ["Model", "variant"]
