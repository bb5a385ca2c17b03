"""Evaluation of manifold flows: likelihoods, reconstruction, and comparisons with a known density."""

from __future__ import annotations

import math
import time

import torch

from ..datasets.base import Dataset, Simulator
from ..registry import EVALUATORS


def manifold_log_prob(model, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """On-manifold log density at the projections of ``x`` and the projections, in batches."""
    device = next(model.parameters()).device
    logs, projs = [], []
    with torch.no_grad():
        for chunk in torch.split(x, batch_size):
            log_p, proj, _ = model.log_prob_manifold(chunk.to(device))
            logs.append(log_p.cpu())
            projs.append(proj.cpu())
    return torch.cat(logs), torch.cat(projs)


def ambient_log_prob(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model.log_prob_ambient(c.to(device)).cpu() for c in torch.split(x, batch_size)])


def kl_on_manifold(log_p_true: torch.Tensor, log_q: torch.Tensor, weights: torch.Tensor) -> tuple[float, float]:
    """KL(true‖model) by quadrature over manifold cells, with the model renormalised on the cells.

    Returns (KL in nats, the model's own mass on the cells before renormalising).
    """
    log_w = torch.log(weights.double())
    log_p = log_p_true.double() + log_w
    log_q = log_q.double() + log_w
    log_p = log_p - torch.logsumexp(log_p, 0)
    mass = torch.logsumexp(log_q, 0)
    log_q = log_q - mass
    kl = (log_p.exp() * (log_p - log_q)).sum()
    return float(kl), float(mass.exp())


def ambient_grid(limit: float, size: int) -> torch.Tensor:
    axis = torch.linspace(-limit, limit, size)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


@EVALUATORS.register("manifold")
def evaluate_manifold(
    model,
    dataset: Dataset,
    batch_size: int = 1000,
    manifold_grid_points: int = 10000,
    ambient_grid_size: int = 100,
    grid_limit: float = 4.0,
    n_samples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Test log-likelihoods, reconstruction error and, for simulators, KL to the true density.

    ``ambient_grid_size``² points over [−limit, limit]² (2-D data only) time the on-manifold density
    on the grid the research code used (its 10,000-point spiral grid).
    """
    if getattr(dataset, "is_image", False):  # image manifolds: see metrics/images.py
        from .images import evaluate_images

        return evaluate_images(model, dataset, batch_size=min(batch_size, 100), n_samples=n_samples, seed=seed)
    torch.manual_seed(seed)
    test = dataset.test_data().reshape(len(dataset.test_data()), -1)
    log_p, proj = manifold_log_prob(model, test, batch_size)
    metrics: dict[str, float] = {
        "n_test": len(test),
        "test_log_likelihood_manifold": float(log_p.mean()),
        "reconstruction_error": float((test - proj).pow(2).sum(1).mean()),
    }
    if getattr(model, "schedule", None) == "joint":
        noisy = test + getattr(model, "noise_std", 0.0) * torch.randn_like(test)
        metrics["test_log_likelihood_ambient"] = float(ambient_log_prob(model, noisy, batch_size).mean())
    if isinstance(dataset, Simulator):
        x, log_true, weights = dataset.manifold_grid(manifold_grid_points)
        start = time.perf_counter()
        log_q, _ = manifold_log_prob(model, x.float(), batch_size)
        seconds = time.perf_counter() - start
        metrics["kl_true_model"], metrics["model_mass_on_manifold"] = kl_on_manifold(log_true, log_q, weights)
        metrics["manifold_density_points_per_s"] = len(x) / seconds
        with torch.no_grad():
            samples = model.sample(n_samples).reshape(n_samples, -1).cpu()
        dense, _, _ = dataset.manifold_grid(20 * manifold_grid_points)
        dist = torch.cdist(samples.double(), dense.double()).min(1).values
        metrics["mean_sample_distance_to_manifold"] = float(dist.mean())
    if ambient_grid_size > 0 and test.shape[1] == 2:
        grid = ambient_grid(grid_limit, ambient_grid_size)
        start = time.perf_counter()
        grid_log_p, _ = manifold_log_prob(model, grid, batch_size)
        metrics["ambient_grid_points"] = len(grid)
        metrics["ambient_grid_seconds"] = time.perf_counter() - start
        metrics["ambient_grid_finite_fraction"] = float(torch.isfinite(grid_log_p).float().mean())
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
