"""A von Mises distribution on a circle of radius 3 in R^2 (the DNF paper's circle experiment)."""

from __future__ import annotations

import math

import torch
from scipy.special import i0e

from .base import ChartCoordinates, DistanceToManifold, Simulator
from .charts import ChartGrid, midpoints


def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Map angles to (−π, π]."""
    return torch.atan2(torch.sin(theta), torch.cos(theta))


def von_mises_log_norm(kappa: float) -> float:
    """log(2π I₀(κ)), stable for large κ (I₀(κ) = i0e(κ)·e^κ)."""
    return math.log(2 * math.pi * i0e(kappa)) + kappa


def sample_von_mises(mu: float, kappa: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """θ ~ vonMises(μ, κ) in (−π, π] by the Best–Fisher rejection sampler (float64, vectorised)."""
    tau = 1 + math.sqrt(1 + 4 * kappa**2)
    rho = (tau - math.sqrt(2 * tau)) / (2 * kappa)
    r = (1 + rho**2) / (2 * rho)
    out = torch.empty(0, dtype=torch.float64)
    while len(out) < n:
        m = 2 * (n - len(out)) + 16
        u1, u2, u3 = torch.rand(3, m, dtype=torch.float64, generator=generator)
        z = torch.cos(math.pi * u1)
        f = (1 + r * z) / (r + z)
        c = kappa * (r - f)
        accept = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        theta = torch.sign(u3 - 0.5) * torch.acos(f.clamp(-1, 1))
        out = torch.cat([out, theta[accept]])
    return wrap_angle(out[:n] + mu)


class VonMisesCircle(Simulator, DistanceToManifold, ChartCoordinates):
    """θ ~ vonMises(μ, κ), x = r (cos θ, sin θ).

    Density w.r.t. arc length: p(x(θ)) = exp(κ cos(θ − μ)) / (2π I₀(κ)) / r.

    References:
        | Denoising Normalizing Flow (Horvat & Pfister, NeurIPS 2021), the von Mises circle experiment

    Arguments:
        n_train: The number of training points.
        n_test: The number of test points.
        radius: The radius r of the circle.
        kappa: The von Mises concentration κ.
        mu: The von Mises mean angle μ (radians).
        seed: The seed of the training and test draws.
    """

    manifold_dim = 1
    data_shape = (2,)

    def __init__(
        self,
        n_train: int = 10000,
        n_test: int = 1000,
        radius: float = 3.0,
        kappa: float = 8.0,
        mu: float = 0.0,
        seed: int = 1,
    ) -> None:
        super().__init__(n_train, n_test, seed)
        self.radius, self.kappa, self.mu = radius, kappa, mu

    def embed(self, theta: torch.Tensor) -> torch.Tensor:
        return self.radius * torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)

    def angles(self, x: torch.Tensor) -> torch.Tensor:
        """Chart coordinate θ ∈ (−π, π] of each point (of its projection onto the circle), shape (N, 1)."""
        x = x.reshape(len(x), -1).double()
        return torch.atan2(x[:, 1], x[:, 0])[:, None]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.embed(sample_von_mises(self.mu, self.kappa, n, generator))

    def log_prob_theta(self, theta: torch.Tensor) -> torch.Tensor:
        return self.kappa * torch.cos(theta - self.mu) - von_mises_log_norm(self.kappa)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """True log density w.r.t. arc length at the projections of ``x`` onto the circle."""
        return self.log_prob_theta(self.angles(x)[:, 0]) - math.log(self.radius)

    def chart_grid(self, n: int) -> ChartGrid:
        """Midpoint grid in θ over (−π, π]; the volume element is the radius."""
        theta, width = midpoints(-math.pi, math.pi, n)
        log_vol = torch.full_like(theta, math.log(self.radius))
        return ChartGrid([theta], [width], self.embed(theta), self.log_prob_theta(theta), log_vol)

    def manifold_grid(self, n: int):
        """Midpoint rule in θ over one turn; weights are arc lengths r·dθ."""
        grid = self.chart_grid(n)
        return grid.x, grid.log_p_manifold(), grid.manifold_weights()

    def distance_to_manifold(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1).double().norm(dim=1) - self.radius).abs()
