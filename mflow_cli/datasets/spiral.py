"""The thin spiral of the DNF paper: a 1-D manifold in R^2 with a known density along it."""

from __future__ import annotations

import math

import torch

from .base import Simulator


class ThinSpiral(Simulator):
    """The thin spiral: u ~ Exponential(mean ``latent_mean``), z = 3π·sqrt(u), x = (−z cos z, z sin z) / 3.

    The density w.r.t. arc length is p(x(z)) = p_z(z) / |dx/dz| with |dx/dz| = sqrt(1 + z²) / 3 and
    p_z(z) = p_u(u) · du/dz, du/dz = 2z / (3π)².

    References:
        | Denoising Normalizing Flow (Horvat & Pfister, NeurIPS 2021), the thin-spiral experiment

    Arguments:
        n_train: The number of training points.
        n_test: The number of test points.
        latent_mean: The mean of the exponential distribution of u.
        seed: The seed of the training and test draws.
    """

    manifold_dim = 1
    data_shape = (2,)

    def __init__(
        self, n_train: int = 10000, n_test: int = 1000, latent_mean: float = 0.3, seed: int = 1
    ) -> None:
        super().__init__(n_train, n_test, seed)
        self.latent_mean = latent_mean

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([-z * torch.cos(z), z * torch.sin(z)], dim=-1) / 3.0

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.empty(n, dtype=torch.float64).exponential_(1.0 / self.latent_mean, generator=generator)
        return self.embed(3 * math.pi * torch.sqrt(u))

    def log_prob_z(self, z: torch.Tensor) -> torch.Tensor:
        """log p_z(z), the density of the curve parameter."""
        scale = (3 * math.pi) ** 2
        u = z**2 / scale
        return -math.log(self.latent_mean) - u / self.latent_mean + torch.log(2 * z / scale)

    def log_speed(self, z: torch.Tensor) -> torch.Tensor:
        """log |dx/dz|, the arc-length Jacobian."""
        return 0.5 * torch.log1p(z**2) - math.log(3.0)

    def manifold_grid(self, n: int, max_latent: float = 4.0):
        """Midpoint rule in z over (0, 3π·sqrt(max_latent)]; the tail beyond holds exp(-max_latent/mean)."""
        z_max = 3 * math.pi * math.sqrt(max_latent)
        dz = z_max / n
        z = (torch.arange(n, dtype=torch.float64) + 0.5) * dz
        log_p = self.log_prob_z(z) - self.log_speed(z)
        weights = torch.exp(self.log_speed(z)) * dz  # arc length of each cell
        return self.embed(z), log_p, weights
