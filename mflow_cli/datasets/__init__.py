"""Datasets: the papers' simulators, image manifolds, standard image datasets and toy 3-D supports.

Every dataset is a :class:`~mflow_cli.datasets.base.Dataset`; the capabilities evaluators use (a known density,
distances to the true manifold, pixels, labels) are the typed classes of :mod:`mflow_cli.datasets.base`.
"""

from .base import Dataset, Simulator

__all__ = ["Dataset", "Simulator"]
