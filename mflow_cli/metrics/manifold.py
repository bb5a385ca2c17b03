"""Evaluation of manifold flows: likelihoods, reconstruction, and comparisons with a known density."""

from __future__ import annotations

import math
import time

import torch

from ..datasets.base import Dataset, Simulator
from ..datasets.charts import cdf_on_grid, empirical_cdf_on_grid


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


LOG_DENSITY_FLOOR = math.log(1e-10)


def density_on_true_manifold(
    model, x: torch.Tensor, batch_size: int, tolerance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's on-manifold density at points ``x`` of the TRUE manifold, and which of them it misses.

    A point farther than ``tolerance`` from its projection onto the learned manifold is not on it: the
    density at the projection belongs to another part of the manifold (on a circle learned as an open
    arc, points of the gap project onto the far side), so the model's density there is 0 (log 1e-10).
    The DNF code does the same with its threshold on ‖v‖². Returns (log q, missed). KLs are then taken
    on the points the model covers (both densities renormalised there), the missed true mass reported
    beside them.
    """
    log_q, proj = manifold_log_prob(model, x, batch_size)
    missed = (proj.double() - x.double()).norm(dim=1) > tolerance
    return torch.where(missed, LOG_DENSITY_FLOOR, log_q.double()), missed


def deflated_log_prob(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The DNF's own estimate of the density on the manifold (inflation–deflation, Horvat & Pfister 2021).

    For Gaussian inflation with std σ, the inflated density at a point x of the manifold is
    p_σ(x) ≈ p(x) N(0; 0, σ² I_{D−d}), so p(x) ≈ p_σ(x) (2πσ²)^{(D−d)/2}: the learned ambient density at
    the true manifold points, rescaled. This is what the paper reports for the spiral, circle and sphere.
    """
    codim = model.data_dim - model.latent_dim
    return ambient_log_prob(model, x, batch_size).double() + 0.5 * codim * math.log(2 * math.pi * model.noise_std**2)


def has_deflated_density(model) -> bool:
    return getattr(model, "has_ambient_density", False) and getattr(model, "noise_std", 0.0) > 0


def chart_metrics(
    model,
    dataset: Simulator,
    grid_size: int,
    samples: torch.Tensor,
    batch_size: int,
    deflated: bool = False,
    tolerance: float = 0.1,
) -> dict[str, float]:
    """Density of the model on the simulator's chart grid (circle: θ; sphere: θ/φ) against the truth.

    - ``chart_grid_mass``: Σ q(x) dA over the grid, the model's total mass on the true manifold;
    - ``ks_density``: max over grid corners of |F_model − F_true|, the CDFs of the chart coordinates
      accumulated from the densities (the DNF paper's KS statistic for its circle and sphere; the
      model's CDF is not renormalised, so lost mass counts);
    - ``ks_samples``: the same with the empirical CDF of the model's samples (their projections);
    - ``kl_true_model_chart``: KL(true‖model) on the grid cells the model covers, both renormalised.

    ``deflated``: use the DNF's deflated ambient density (:func:`deflated_log_prob`) instead of the
    on-manifold density at the projections; the keys then end in ``_deflated``.
    """
    grid = dataset.chart_grid(grid_size)
    if deflated:
        log_q = deflated_log_prob(model, grid.x.float(), batch_size)
    else:
        log_q, missed = density_on_true_manifold(model, grid.x.float(), batch_size, tolerance)
    weights = grid.manifold_weights()
    cell_true = (grid.log_p_chart.exp() * grid.cell_volume).reshape(grid.shape)
    cell_model = (log_q.exp() * weights).reshape(grid.shape)
    cdf_true = cdf_on_grid(cell_true)
    out = {"chart_grid_points": len(grid.x), "chart_grid_mass": float(cell_model.sum())}
    out["ks_density"] = float((cdf_on_grid(cell_model) - cdf_true).abs().max())
    emp = empirical_cdf_on_grid(dataset.angles(samples), grid.axes, grid.widths)
    out["ks_samples"] = float((emp - cdf_true).abs().max())
    hit = torch.ones(len(log_q), dtype=torch.bool) if deflated else ~missed
    out["kl_true_model_chart"] = None
    if hit.any():
        out["kl_true_model_chart"], _ = kl_on_manifold(grid.log_p_manifold()[hit], log_q[hit], weights[hit])
    if deflated:
        return {f"{k}_deflated": v for k, v in out.items() if k not in ("chart_grid_points", "ks_samples")}
    return out


def ambient_grid(limit: float, size: int) -> torch.Tensor:
    axis = torch.linspace(-limit, limit, size)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def evaluate_manifold(
    model,
    dataset: Dataset,
    batch_size: int = 1000,
    manifold_grid_points: int = 10000,
    off_manifold_tolerance: float = 0.1,
    ambient_grid_size: int = 100,
    grid_limit: float = 4.0,
    n_samples: int = 2000,
    seed: int = 0,
    chart_grid_size: int = 60,
) -> dict[str, float]:
    """Test log-likelihoods, reconstruction error and, for simulators, KL to the true density.

    Simulators with an angular chart (circle, spheres; ``chart_grid_size`` cells per polar angle,
    ``n`` cells along a 1-D chart where ``n = manifold_grid_points``) add :func:`chart_metrics`.
    The model density at a true manifold point whose projection onto the learned manifold is farther
    than ``off_manifold_tolerance`` is 0 (:func:`density_on_true_manifold`).
    Models trained on inflated data (DNF) repeat the density comparisons with the paper's deflated
    ambient density (keys ending in ``_deflated``, :func:`deflated_log_prob`).
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
    if getattr(model, "has_ambient_density", False):
        noisy = test + getattr(model, "noise_std", 0.0) * torch.randn_like(test)
        metrics["test_log_likelihood_ambient"] = float(ambient_log_prob(model, noisy, batch_size).mean())
    if isinstance(dataset, Simulator):
        x, log_true, weights = dataset.manifold_grid(manifold_grid_points)
        start = time.perf_counter()
        log_q, missed = density_on_true_manifold(model, x.float(), batch_size, off_manifold_tolerance)
        seconds = time.perf_counter() - start
        hit = ~missed
        metrics["kl_true_model"] = None  # when the learned manifold misses the true one everywhere
        if hit.any():
            metrics["kl_true_model"], _ = kl_on_manifold(log_true[hit], log_q[hit], weights[hit])
        metrics["model_mass_on_manifold"] = float((log_q.exp() * weights).sum())
        metrics["true_mass_off_learned_manifold"] = float((log_true.exp() * weights)[missed].sum())
        metrics["manifold_density_points_per_s"] = len(x) / seconds
        if has_deflated_density(model):
            log_d = deflated_log_prob(model, x.float(), batch_size)
            metrics["kl_true_model_deflated"], metrics["model_mass_on_manifold_deflated"] = kl_on_manifold(
                log_true, log_d, weights
            )
        with torch.no_grad():
            samples = model.sample(n_samples).reshape(n_samples, -1).cpu()
        if hasattr(dataset, "distance_to_manifold"):
            dist = dataset.distance_to_manifold(samples)
        else:
            dense, _, _ = dataset.manifold_grid(20 * manifold_grid_points)
            dist = torch.cdist(samples.double(), dense.double()).min(1).values
        metrics["mean_sample_distance_to_manifold"] = float(dist.mean())
        if hasattr(dataset, "chart_grid") and dataset.manifold_dim <= 2:
            size = manifold_grid_points if dataset.manifold_dim == 1 else chart_grid_size
            metrics.update(chart_metrics(model, dataset, size, samples, batch_size, tolerance=off_manifold_tolerance))
            if has_deflated_density(model):
                metrics.update(chart_metrics(model, dataset, size, samples, batch_size, deflated=True))
    if ambient_grid_size > 0 and test.shape[1] == 2:
        grid = ambient_grid(grid_limit, ambient_grid_size)
        start = time.perf_counter()
        grid_log_p, _ = manifold_log_prob(model, grid, batch_size)
        metrics["ambient_grid_points"] = len(grid)
        metrics["ambient_grid_seconds"] = time.perf_counter() - start
        metrics["ambient_grid_finite_fraction"] = float(torch.isfinite(grid_log_p).float().mean())
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
