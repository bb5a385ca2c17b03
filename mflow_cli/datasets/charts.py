"""Angular charts of the toy manifolds (circle, spheres): grids in chart coordinates for quadrature.

A simulator with a chart gives :meth:`angles` (chart coordinates of points) and :meth:`chart_grid`
(a midpoint grid over the whole chart). The true density in chart coordinates, ``log_p_chart``, and the
volume element ``log_volume`` (log sqrt det of the metric) give the density w.r.t. the manifold's
volume as ``log_p_chart − log_volume``; evaluation uses the same grid for KL, total mass and the
CDF-based Kolmogorov–Smirnov statistics of the DNF paper (its circle and sphere experiments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ChartGrid:
    """A product midpoint grid over a chart; point arrays are flat in ``indexing="ij"`` order."""

    axes: list[torch.Tensor]  # cell midpoints per chart coordinate
    widths: list[float]  # cell width per chart coordinate
    x: torch.Tensor  # (N, D) embedded points on the manifold
    log_p_chart: torch.Tensor  # (N,) true log density w.r.t. d(coordinates)
    log_volume: torch.Tensor  # (N,) log volume element at each point

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    @property
    def cell_volume(self) -> float:
        """Coordinate volume of one cell."""
        return math.prod(self.widths)

    def manifold_weights(self) -> torch.Tensor:
        """Volume of each cell on the manifold (for ``Simulator.manifold_grid``)."""
        return self.log_volume.exp() * self.cell_volume

    def log_p_manifold(self) -> torch.Tensor:
        return self.log_p_chart - self.log_volume


def midpoints(low: float, high: float, n: int) -> tuple[torch.Tensor, float]:
    width = (high - low) / n
    return low + (torch.arange(n, dtype=torch.float64) + 0.5) * width, width


def mesh(axes: list[torch.Tensor]) -> torch.Tensor:
    """(N, len(axes)) coordinates of the product grid, ``ij`` order."""
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def cdf_on_grid(cell_mass: torch.Tensor) -> torch.Tensor:
    """Cumulative mass up to each cell's upper corner, for a grid of cell masses of any dimension."""
    out = cell_mass
    for dim in range(cell_mass.dim()):
        out = out.cumsum(dim)
    return out


def empirical_cdf_on_grid(coords: torch.Tensor, axes: list[torch.Tensor], widths: list[float]) -> torch.Tensor:
    """Fraction of the points ``coords`` (N, d) below each cell's upper corner (d = len(axes))."""
    counts = torch.zeros([len(a) for a in axes], dtype=torch.float64)
    index = []
    for j, (axis, width) in enumerate(zip(axes, widths, strict=True)):
        upper = axis + 0.5 * width
        # cell i holds coordinates in (upper[i-1], upper[i]]; points beyond the chart go to its ends
        index.append(torch.searchsorted(upper, coords[:, j].double().contiguous()).clamp(max=len(axis) - 1))
    flat = torch.zeros(counts.numel(), dtype=torch.float64)
    strides = torch.tensor(counts.stride())
    flat.index_add_(0, (torch.stack(index, 1) * strides).sum(1), torch.ones(len(coords), dtype=torch.float64))
    return cdf_on_grid(flat.reshape(counts.shape)) / max(len(coords), 1)
