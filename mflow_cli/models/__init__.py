"""Generative models: manifold flows (M-flow, PIE, DNF), the auto-encoder baselines, flow-VAEs and VQ-Flows.

Each model is an :class:`~mflow_cli.models.base.Model` (phases, loss, sample, encode) and declares what it offers
evaluators through the interfaces of :mod:`mflow_cli.models.interfaces`. Model kinds (``dnf``, ``mflow``, ...)
are presets of these classes, listed in :mod:`mflow_cli.app.catalog`.
"""

from .base import Model

__all__ = ["Model"]
