"""Model families register their kinds in :data:`mflow_cli.registry.MODELS` on import."""

from . import (
    flow_vae,  # noqa: F401
    manifold_flow,  # noqa: F401
    vq_flow,  # noqa: F401
)
from .base import Model, variant
from .infomax_vae import InfoMaxVAE  # noqa: F401
from .pae import ProbabilisticAutoEncoder  # noqa: F401

__all__ = ["Model", "variant"]
