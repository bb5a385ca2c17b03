"""Toy 3-D data on manifolds with several components and non-trivial topology (VQ-Flow paper, toy 3-D).

Each shape has an exact sampler on its support (a union of curves or surfaces in R^3) and an exact
distance-to-support function, so sample quality can be measured as the mean distance of model samples
to the true support. ``noise`` adds isotropic Gaussian noise of that std to the data, which gives the
data a proper density in R^3 (so full-dimensional flows have finite held-out log-likelihoods).

- ``linked_rings``: two unit circles, one in the xy-plane about the origin, one in the xz-plane about
  (1, 0, 0); they pass through each other's discs, so they are linked (a Hopf link).
- ``torus``: the surface of a torus (major radius ``R``, minor ``r``), uniform w.r.t. surface area.
- ``spheres``: three disjoint spheres of radius 0.5, uniform on each, equally weighted.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..errors import ConfigError
from .base import DistanceToManifold, SampledDataset

Shape = Literal["linked_rings", "torus", "spheres"]

# (centre, unit normal) of each ring; radius 1
_RINGS = (((0.0, 0.0, 0.0), (0.0, 0.0, 1.0)), ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)))
_SPHERE_CENTRES = ((-1.2, 0.0, 0.0), (0.3, 1.0, 0.3), (0.6, -0.8, -0.5))
_SPHERE_RADIUS = 0.5
_TORUS_R, _TORUS_SMALL_R = 1.0, 0.35


def _ring_points(theta: torch.Tensor, centre: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Points of the unit circle about ``centre`` in the plane orthogonal to ``normal``."""
    a = torch.tensor([1.0, 0.0, 0.0], dtype=theta.dtype)
    if abs(float(normal @ a)) > 0.9:
        a = torch.tensor([0.0, 1.0, 0.0], dtype=theta.dtype)
    e1 = a - (a @ normal) * normal
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(normal, e1)
    return centre + torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2


def sample_support(shape: Shape, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points (float64) drawn from the shape's distribution on its (noiseless) support."""
    f64 = torch.float64
    if shape == "linked_rings":
        which = torch.randint(0, 2, (n,), generator=generator)
        theta = torch.rand(n, generator=generator, dtype=f64) * 2 * math.pi
        out = torch.empty(n, 3, dtype=f64)
        for i, (c, nrm) in enumerate(_RINGS):  # two rings, not a loop over samples
            sel = which == i
            out[sel] = _ring_points(theta[sel], torch.tensor(c, dtype=f64), torch.tensor(nrm, dtype=f64))
        return out
    if shape == "torus":
        # area element ∝ R + r cos(phi): rejection sampling of phi, uniform theta
        big, small = _TORUS_R, _TORUS_SMALL_R
        phis: list[torch.Tensor] = []
        have = 0
        while have < n:
            phi = torch.rand(2 * n, generator=generator, dtype=f64) * 2 * math.pi
            keep = torch.rand(2 * n, generator=generator, dtype=f64) * (big + small) < big + small * torch.cos(phi)
            phis.append(phi[keep])
            have += int(keep.sum())
        phi = torch.cat(phis)[:n]
        theta = torch.rand(n, generator=generator, dtype=f64) * 2 * math.pi
        rho = big + small * torch.cos(phi)
        return torch.stack([rho * torch.cos(theta), rho * torch.sin(theta), small * torch.sin(phi)], dim=1)
    if shape == "spheres":
        which = torch.randint(0, len(_SPHERE_CENTRES), (n,), generator=generator)
        direction = torch.randn(n, 3, generator=generator, dtype=f64)
        direction = direction / direction.norm(dim=1, keepdim=True)
        centres = torch.tensor(_SPHERE_CENTRES, dtype=f64)[which]
        return centres + _SPHERE_RADIUS * direction
    raise ConfigError(f"unknown toy 3-D shape {shape!r}")


def distance_to_support(shape: Shape, x: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance (N,) from each point of ``x`` (N, 3) to the shape's support."""
    x = x.double()
    if shape == "linked_rings":
        dists = []
        for c, nrm in _RINGS:
            p = x - torch.tensor(c, dtype=x.dtype)
            normal = torch.tensor(nrm, dtype=x.dtype)
            h = p @ normal
            rho = (p - h[:, None] * normal).norm(dim=1)
            dists.append(torch.sqrt(h**2 + (rho - 1.0) ** 2))
        return torch.stack(dists).min(0).values
    if shape == "torus":
        rho = x[:, :2].norm(dim=1)
        return (torch.sqrt((rho - _TORUS_R) ** 2 + x[:, 2] ** 2) - _TORUS_SMALL_R).abs()
    if shape == "spheres":
        centres = torch.tensor(_SPHERE_CENTRES, dtype=x.dtype)
        return (torch.cdist(x, centres) - _SPHERE_RADIUS).abs().min(1).values
    raise ConfigError(f"unknown toy 3-D shape {shape!r}")


class Toy3D(SampledDataset, DistanceToManifold):
    """Samples on a toy 3-D support (``shape``) plus Gaussian noise of std ``noise``.

    References:
        | VQ-Flows: Vector Quantized Local Normalizing Flows (Sidheekh et al., 2022)
        | https://arxiv.org/abs/2203.11556

    Arguments:
        shape: The support: two linked rings, a torus or three spheres.
        n_train: The number of training points.
        n_test: The number of test points.
        noise: The std of the isotropic Gaussian noise added to points of the support.
        seed: The seed of the training and test draws.
    """

    data_shape = (3,)

    def __init__(
        self, shape: Shape = "linked_rings", n_train: int = 10000, n_test: int = 2000, noise: float = 0.05,
        seed: int = 1,
    ) -> None:
        if noise < 0:
            raise ConfigError(f"noise must be >= 0, got {noise}")
        super().__init__(n_train, n_test, seed)
        self.shape, self.noise = shape, noise

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = sample_support(self.shape, n, generator)
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return x

    def distance_to_manifold(self, x: torch.Tensor) -> torch.Tensor:
        return distance_to_support(self.shape, x.reshape(len(x), 3))

