"""Distance of images to the true procedural image manifold: the projection onto the renderer.

The procedural manifold is {render(z) : z ∈ R^n} (:func:`mflow_cli.datasets.procedural.render`). The distance of
an image x to it is min_z ‖x − 256·render(z)‖₂, in pixel values p ∈ [0, 256) (one unit = one 8-bit level; the
norm runs over all 3·R·R values). It is found per image by

1. seeds: a regular grid of z (equal prior mass per cell, Φ⁻¹((i + ½)/G) per axis) when n ≤ 2, else draws from
   the prior N(0, I); the ``starts`` candidates whose renders lie nearest to x;
2. Adam on z from each of them, all images and starts in one batch, the learning rate decayed on a cosine;
3. the smallest distance met over steps and starts.

Rendered images come back to their own z with distance ≈ 0; an image rendered and quantized to 8 bits lies at
about √(3R²/12) levels (the quantization noise, U(−½, ½) per value): the floor a model's samples are compared to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..datasets.procedural import render
from ..errors import ConfigError

PIXEL_SCALE = 256.0  # render() is in [0, 1); pixel values p = 256·render(z), as PixelSpace.to_pixels


@dataclass(frozen=True)
class Renderer:
    """The procedural renderer of ``n_params`` numbers at ``resolution``, in pixel values p ∈ [0, 256).

    Arguments:
        n_params: The manifold's dimension n (numbers per image).
        resolution: The image size R (images are 3×R×R).
    """

    n_params: int
    resolution: int

    def __post_init__(self) -> None:
        if self.n_params < 1 or self.resolution < 2:
            raise ConfigError(f"n_params must be >= 1 and resolution >= 2, got {self.n_params}, {self.resolution}")

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """Flat images (N, 3·R·R) in pixel values for parameters z (N, n), differentiable in z."""
        return PIXEL_SCALE * render(z, self.resolution).reshape(len(z), -1)


@dataclass(frozen=True)
class Projection:
    """The nearest renderer image of each input: its parameters ``z`` (N, n) and the ``distance`` (N,) to it."""

    z: torch.Tensor
    distance: torch.Tensor


def seed_parameters(n_params: int, grid_size: int, n_candidates: int, generator: torch.Generator) -> torch.Tensor:
    """Candidate z: a grid of ``grid_size``^n points of equal prior mass (n ≤ 2), else ``n_candidates`` prior draws."""
    if n_params <= 2:
        axis = math.sqrt(2) * torch.erfinv(2 * (torch.arange(grid_size) + 0.5) / grid_size - 1)
        return torch.cartesian_prod(*[axis] * n_params).reshape(-1, n_params)
    return torch.randn(n_candidates, n_params, generator=generator)


def nearest_seeds(x: torch.Tensor, candidates: torch.Tensor, renderer: Renderer, starts: int,
                  chunk: int = 512) -> torch.Tensor:
    """The ``starts`` candidates (N, starts, n) whose renders lie nearest to each row of flat ``x`` (N, D)."""
    with torch.no_grad():
        bank = renderer.pixels(candidates)
        k = min(starts, len(candidates))
        idx = torch.cat([torch.cdist(part, bank).topk(k, dim=1, largest=False).indices
                         for part in torch.split(x, chunk)])
    return candidates[idx]


def refine(x: torch.Tensor, z0: torch.Tensor, renderer: Renderer, steps: int, lr: float = 0.1) -> Projection:
    """Adam on ‖x − render(z)‖² from each start z0 (N, S, n); the best z and distance over steps and starts."""
    n, starts, n_params = z0.shape
    target = x.repeat_interleave(starts, dim=0)
    z = z0.reshape(n * starts, n_params).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=lr * 1e-3)
    best_sq = torch.full((n * starts,), math.inf)
    best_z = z.detach().clone()
    for step in range(steps + 1):
        sq = (renderer.pixels(z) - target).pow(2).sum(1)
        with torch.no_grad():
            better = sq < best_sq
            best_sq = torch.where(better, sq, best_sq)
            best_z[better] = z[better]
        if step == steps:
            break
        opt.zero_grad()
        sq.sum().backward()  # rows are independent: Adam's per-coordinate steps keep them so
        opt.step()
        schedule.step()
    best_sq, best_z = best_sq.reshape(n, starts), best_z.reshape(n, starts, n_params)
    pick = best_sq.argmin(1)
    rows = torch.arange(n)
    return Projection(best_z[rows, pick].detach(), best_sq[rows, pick].clamp(min=0).sqrt().detach())


def project_onto_renderer(
    images: torch.Tensor,
    renderer: Renderer,
    starts: int = 4,
    steps: int = 150,
    generator: torch.Generator | None = None,
    grid_size: int = 64,
    n_candidates: int = 8192,
    chunk: int = 1000,
) -> Projection:
    """Project images (N, 3, R, R) or flat (N, 3·R·R), in pixel values p ∈ [0, 256), onto the renderer.

    ``starts`` seeds per image (the nearest grid points or prior draws, see the module docstring), each refined
    by ``steps`` Adam steps; ``chunk`` images are refined together. Returns the parameters of the nearest render
    found and the distance ‖x − 256·render(z)‖₂ in 8-bit levels. Non-finite inputs get distance inf.
    """
    if starts < 1 or steps < 0:
        raise ConfigError(f"starts must be >= 1 and steps >= 0, got {starts}, {steps}")
    x = images.reshape(len(images), -1).float().cpu()
    finite = torch.isfinite(x).all(1)
    x = torch.where(finite[:, None], x, torch.zeros_like(x))
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    candidates = seed_parameters(renderer.n_params, grid_size, n_candidates, gen)
    parts = [refine(part, nearest_seeds(part, candidates, renderer, starts), renderer, steps)
             for part in torch.split(x, chunk)]
    distance = torch.cat([p.distance for p in parts])
    return Projection(torch.cat([p.z for p in parts]), torch.where(finite, distance, math.inf))


def distance_summary(prefix: str, distance: torch.Tensor) -> dict[str, float]:
    """``<prefix>_mean``, ``_median``, ``_q10`` and ``_q90`` of distances (inf where an input was not finite)."""
    d = distance.double()
    return {
        f"{prefix}_mean": float(d.mean()),
        f"{prefix}_median": float(d.median()),
        f"{prefix}_q10": float(d.quantile(0.1)),
        f"{prefix}_q90": float(d.quantile(0.9)),
    }
