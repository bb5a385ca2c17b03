"""Densities on spheres: the DNF paper's von Mises mixture on S² and M-flow's spherical Gaussian on Sⁿ."""

from __future__ import annotations

import itertools
import math

import torch

from ..errors import ConfigError
from .base import ChartCoordinates, DistanceToManifold, Simulator
from .charts import ChartGrid, mesh, midpoints
from .circle import sample_von_mises, von_mises_log_norm

# The DNF paper's four mixture centres (θ polar, φ azimuth), from its sphere experiment.
DNF_SPHERE_CENTRES = (
    (math.pi / 4, math.pi / 2),
    (3 * math.pi / 4, 4 * math.pi / 3),
    (3 * math.pi / 4, math.pi / 2),
    (math.pi / 4, 4 * math.pi / 3),
)


class VonMisesSphereMixture(Simulator, DistanceToManifold, ChartCoordinates):
    """Equal mixture of four products of von Mises laws on the unit sphere S² ⊂ R³ (DNF paper).

    Component k: 2(θ − π/2) ~ vM(2(μθ − π/2), κ), i.e. p(θ) = 2 e^{κ cos 2(θ − μθ)} / (2π I₀(κ)) on (0, π),
    and φ ~ vM(μφ, κ) on (0, 2π); x = (sin θ cos φ, sin θ sin φ, cos θ). The density w.r.t. area is
    p(θ, φ) / sin θ.

    References:
        | Denoising Normalizing Flow (Horvat & Pfister, NeurIPS 2021), the von Mises sphere experiment

    Arguments:
        n_train: The number of training points.
        n_test: The number of test points.
        kappa: The von Mises concentration κ of every component.
        seed: The seed of the training and test draws.
    """

    manifold_dim = 2
    data_shape = (3,)

    def __init__(self, n_train: int = 10000, n_test: int = 1000, kappa: float = 6.0, seed: int = 1) -> None:
        super().__init__(n_train, n_test, seed)
        self.kappa = kappa
        self.centres = torch.tensor(DNF_SPHERE_CENTRES, dtype=torch.float64)

    def embed(self, angles: torch.Tensor) -> torch.Tensor:
        theta, phi = angles[:, 0], angles[:, 1]
        return torch.stack([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)], 1)

    def angles(self, x: torch.Tensor) -> torch.Tensor:
        """(θ, φ) ∈ [0, π] × [0, 2π) of each point's projection onto the sphere, shape (N, 2)."""
        x = x.reshape(len(x), -1).double()
        theta = torch.acos((x[:, 2] / x.norm(dim=1)).clamp(-1, 1))
        phi = torch.remainder(torch.atan2(x[:, 1], x[:, 0]), 2 * math.pi)
        return torch.stack([theta, phi], 1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.randint(0, len(self.centres), (n,), generator=generator)
        mu = self.centres[k]
        theta = sample_von_mises(0.0, self.kappa, n, generator)
        theta = torch.remainder(theta + 2 * (mu[:, 0] - math.pi / 2) + math.pi, 2 * math.pi) - math.pi
        phi = sample_von_mises(0.0, self.kappa, n, generator)
        phi = torch.remainder(phi + mu[:, 1], 2 * math.pi)
        return self.embed(torch.stack([theta / 2 + math.pi / 2, phi], 1))

    def log_prob_chart(self, angles: torch.Tensor) -> torch.Tensor:
        """log p(θ, φ) w.r.t. dθ dφ."""
        theta, phi = angles[:, :1], angles[:, 1:]
        mu_t, mu_p = self.centres[:, 0], self.centres[:, 1]
        log_comp = (
            math.log(2.0) + self.kappa * (torch.cos(2 * (theta - mu_t)) + torch.cos(phi - mu_p))
            - 2 * von_mises_log_norm(self.kappa)
        )
        return torch.logsumexp(log_comp, 1) - math.log(len(self.centres))

    def log_volume(self, angles: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.sin(angles[:, 0]))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """True log density w.r.t. area at the projections of ``x`` onto the sphere."""
        a = self.angles(x)
        return self.log_prob_chart(a) - self.log_volume(a)

    def chart_grid(self, n: int) -> ChartGrid:
        """``n`` θ-cells × ``2n`` φ-cells (midpoints)."""
        theta, dt = midpoints(0.0, math.pi, n)
        phi, dp = midpoints(0.0, 2 * math.pi, 2 * n)
        a = mesh([theta, phi])
        return ChartGrid([theta, phi], [dt, dp], self.embed(a), self.log_prob_chart(a), self.log_volume(a))

    def manifold_grid(self, n: int):
        """About ``n`` points: a θ/φ midpoint grid, weights sin θ dθ dφ."""
        grid = self.chart_grid(max(2, round(math.sqrt(n / 2))))
        return grid.x, grid.log_p_manifold(), grid.manifold_weights()

    def distance_to_manifold(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1).double().norm(dim=1) - 1).abs()


def nsphere_embed(z: torch.Tensor) -> torch.Tensor:
    """Spherical coordinates (N, n) -> points on Sⁿ ⊂ R^{n+1} (the M-flow code's convention).

    x₀ = cos z₀, x_i = sin z₀ ⋯ sin z_{i−1} cos z_i, x_n = sin z₀ ⋯ sin z_{n−1}; z_{n−1} is the azimuth.
    """
    ones = torch.ones_like(z[:, :1])
    sins = torch.cumprod(torch.cat([ones, torch.sin(z)], 1), 1)
    coss = torch.cat([torch.cos(z), ones], 1)
    return sins * coss


class SphericalGaussian(Simulator, DistanceToManifold, ChartCoordinates):
    """M-flow's spherical Gaussian: angles z ~ N(phase, width²) per coordinate, x = embed(z) on Sⁿ.

    The data live in R^D (D = ``data_dim`` > n): the radius is 1 + ε·N(0,1) and the D − n − 1 extra
    coordinates are ε·N(0,1) (ε = ``epsilon``; 0 puts the data exactly on the sphere). The true
    density is that of the ε → 0 limit: the push-forward of the Gaussian through the chart, summed
    over every preimage of a point (each polar angle may be reflected, every angle shifted by 2π),
    divided by the volume element Π_i sin^{n−1−i} z_i.

    References:
        | Flows for simultaneous manifold learning and density estimation (Brehmer & Cranmer, 2020)
        | https://arxiv.org/abs/2003.13913

    Arguments:
        n_train: The number of training points.
        n_test: The number of test points.
        latent_dim: The sphere's dimension n (1 <= n < data_dim).
        data_dim: The ambient dimension D.
        phase: The mean of every chart angle (radians).
        width: The std of every chart angle (radians).
        epsilon: The std ε of the radial and extra-coordinate noise (0: exactly on the sphere).
        seed: The seed of the training and test draws.
    """

    def __init__(
        self,
        n_train: int = 10000,
        n_test: int = 1000,
        latent_dim: int = 2,
        data_dim: int = 3,
        phase: float = 0.5 * math.pi,
        width: float = 0.25 * math.pi,
        epsilon: float = 0.01,
        seed: int = 1,
    ) -> None:
        super().__init__(n_train, n_test, seed)
        if not 1 <= latent_dim < data_dim:
            raise ConfigError(f"latent_dim must be in 1..data_dim - 1, got {latent_dim} and data_dim {data_dim}")
        self.manifold_dim = latent_dim
        self.data_shape = (data_dim,)
        self.phase, self.width, self.epsilon = phase, width, epsilon

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        d, big = self.manifold_dim, self.data_shape[0]
        z = self.phase + self.width * torch.randn(n, d, dtype=torch.float64, generator=generator)
        eps = self.epsilon * torch.randn(n, big - d, dtype=torch.float64, generator=generator)
        return torch.cat([nsphere_embed(z) * (1 + eps[:, :1]), eps[:, 1:]], 1)

    def angles(self, x: torch.Tensor) -> torch.Tensor:
        """Canonical chart coordinates (polar in [0, π], azimuth in [0, 2π)) of the projections, (N, n)."""
        n = self.manifold_dim
        s = x.reshape(len(x), -1).double()[:, : n + 1]
        tail = s.flip(1).pow(2).cumsum(1).flip(1).sqrt()  # ‖x_{i:}‖
        polar = torch.acos((s[:, : n - 1] / tail[:, : n - 1].clamp_min(1e-300)).clamp(-1, 1))
        azimuth = torch.remainder(torch.atan2(s[:, n], s[:, n - 1]), 2 * math.pi)
        return torch.cat([polar, azimuth[:, None]], 1)

    def log_volume(self, angles: torch.Tensor) -> torch.Tensor:
        n = self.manifold_dim
        powers = torch.arange(n - 1, 0, -1, dtype=torch.float64)
        return (powers * torch.log(torch.sin(angles[:, : n - 1]))).sum(1) if n > 1 else angles[:, 0] * 0

    def _log_wrapped_normal(self, a: torch.Tensor) -> torch.Tensor:
        shifts = 2 * math.pi * torch.arange(-3, 4, dtype=torch.float64)
        u = (a[..., None] + shifts - self.phase) / self.width
        return torch.logsumexp(-0.5 * u**2, -1) - math.log(self.width * math.sqrt(2 * math.pi))

    def log_prob_chart(self, angles: torch.Tensor) -> torch.Tensor:
        """log density of the canonical chart coordinates (all preimages folded in)."""
        n = self.manifold_dim
        terms = []
        for flips in itertools.product((0, 1), repeat=n - 1):
            parity, log_p = 0, torch.zeros(len(angles), dtype=torch.float64)
            for i, f in enumerate(flips):
                sign = -1.0 if (parity + f) % 2 else 1.0
                log_p = log_p + self._log_wrapped_normal(math.pi * parity + sign * angles[:, i])
                parity = (parity + f) % 2
            terms.append(log_p + self._log_wrapped_normal(angles[:, n - 1] + math.pi * parity))
        return torch.logsumexp(torch.stack(terms), 0)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        a = self.angles(x)
        return self.log_prob_chart(a) - self.log_volume(a)

    def chart_grid(self, n: int) -> ChartGrid:
        """``n`` cells per polar angle, ``2n`` for the azimuth."""
        d = self.manifold_dim
        axes, widths = [], []
        for i in range(d):
            axis, w = midpoints(0.0, math.pi, n) if i < d - 1 else midpoints(0.0, 2 * math.pi, 2 * n)
            axes.append(axis)
            widths.append(w)
        a = mesh(axes)
        x = torch.cat([nsphere_embed(a), a.new_zeros(len(a), self.data_shape[0] - d - 1)], 1)
        return ChartGrid(axes, widths, x, self.log_prob_chart(a), self.log_volume(a))

    def manifold_grid(self, n: int):
        grid = self.chart_grid(max(2, round((n / 2) ** (1 / self.manifold_dim))))
        return grid.x, grid.log_p_manifold(), grid.manifold_weights()

    def distance_to_manifold(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), -1).double()
        n = self.manifold_dim
        radial = x[:, : n + 1].norm(dim=1) - 1
        return (radial.pow(2) + x[:, n + 1 :].pow(2).sum(1)).sqrt()
