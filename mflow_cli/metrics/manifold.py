"""Evaluation of manifold models (M-flow, DNF, PIE, PAE, InfoMax VAE) on vector data: likelihoods,
reconstruction, and comparisons with a known density (:func:`evaluate_manifold`, :class:`ManifoldEvaluation`).

Image manifolds have their own evaluator, :func:`mflow_cli.metrics.images.evaluate_images`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..datasets.base import ChartCoordinates, Dataset, DistanceToManifold, KnownDensity
from ..datasets.charts import cdf_on_grid, empirical_cdf_on_grid
from ..models.interfaces import ManifoldModel
from .common import at_least, finite_metrics, model_device, positive


@dataclass(frozen=True)
class ManifoldEvaluation:
    r"""What :func:`evaluate_manifold` computes, and the settings :func:`~mflow_cli.plots.manifold.plot_manifold`
    shares with it.

    Arguments:
        batch_size: Points per batch of density evaluations (memory only; the numbers do not depend on it).
        manifold_grid_points: Points of the quadrature grid on the true manifold (KL, masses), and the
            cells along a 1-D chart (circle).
        off_manifold_tolerance: A true manifold point farther than this from its projection onto the
            learned manifold counts as missed (model density 0 there).
        ambient_grid_size: Points per axis of the ambient timing grid over [−grid_limit, grid_limit]²
            (2-D data only; 0 skips it).
        grid_limit: Half-width of the ambient grid (evaluation and the density figure).
        n_samples: Model samples drawn for the distance of samples to the true manifold, the KS statistic
            of the samples and the sample figures.
        seed: Seed of the random draws (samples, the DNF's inflation noise on test points).
        chart_grid_size: Cells per polar angle of the θ/φ grid on 2-D manifolds with a chart (spheres).
    """

    batch_size: int = 1000
    manifold_grid_points: int = 10000
    off_manifold_tolerance: float = 0.1
    ambient_grid_size: int = 100
    grid_limit: float = 4.0
    n_samples: int = 2000
    seed: int = 0
    chart_grid_size: int = 60

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        at_least("manifold_grid_points", self.manifold_grid_points, 2)
        positive("off_manifold_tolerance", self.off_manifold_tolerance)
        at_least("ambient_grid_size", self.ambient_grid_size, 0)
        positive("grid_limit", self.grid_limit)
        at_least("n_samples", self.n_samples, 1)
        at_least("chart_grid_size", self.chart_grid_size, 2)


def manifold_log_prob(model: ManifoldModel, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """On-manifold log density at the projections of flat ``x`` and the projections (flat), in batches."""
    device = model_device(model)
    logs, projs = [], []
    with torch.no_grad():
        for chunk in torch.split(x, batch_size):
            log_p, proj, _ = model.log_prob_manifold(chunk.to(device))
            logs.append(log_p.cpu())
            projs.append(proj.reshape(len(chunk), -1).cpu())
    return torch.cat(logs), torch.cat(projs)


def ambient_log_prob(model: ManifoldModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's log density in R^D at flat ``x``, in batches (models with ``has_ambient_density``)."""
    device = model_device(model)
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
    model: ManifoldModel, x: torch.Tensor, batch_size: int, tolerance: float
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


def deflated_log_prob(model: ManifoldModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The DNF's own estimate of the density on the manifold (inflation–deflation, Horvat & Pfister 2021).

    For Gaussian inflation with std σ, the inflated density at a point x of the manifold is
    p_σ(x) ≈ p(x) N(0; 0, σ² I_{D−d}), so p(x) ≈ p_σ(x) (2πσ²)^{(D−d)/2}: the learned ambient density at
    the true manifold points, rescaled. This is what the paper reports for the spiral, circle and sphere.
    """
    codim = model.data_dim - model.latent_dim
    return ambient_log_prob(model, x, batch_size).double() + 0.5 * codim * math.log(2 * math.pi * model.noise_std**2)


def has_deflated_density(model: ManifoldModel) -> bool:
    """Whether the model was trained on inflated data with an ambient density (DNF): it has a deflated density."""
    return model.has_ambient_density and model.noise_std > 0


def chart_metrics(
    model: ManifoldModel,
    dataset: ChartCoordinates,
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
    """``size``² points (size², 2) of the square grid over [−limit, limit]², x fastest."""
    axis = torch.linspace(-limit, limit, size)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def evaluate_manifold(
    model: ManifoldModel, dataset: Dataset, options: ManifoldEvaluation = ManifoldEvaluation()
) -> dict[str, float | int | None]:
    """Test log-likelihoods, reconstruction error and, where the truth is known, its comparison with the model.

    Every model (on the first ``n_test`` = all test points, flattened):

    - ``n_test``: the number of test points;
    - ``test_log_likelihood_manifold``: mean on-manifold log density log p(g(u(x))) at the projections of
      the test points (M-flow eq. 3), in nats;
    - ``reconstruction_error``: mean ‖x − g(u(x))‖² over the test points;
    - ``test_log_likelihood_ambient`` (models with ``has_ambient_density``: flow, PIE, DNF): mean log density
      in R^D of the test points, with the model's inflation noise ``noise_std`` added (DNF).

    Datasets with a :class:`~mflow_cli.datasets.base.KnownDensity` (simulators), on a quadrature grid of
    ``manifold_grid_points`` points of the true manifold (:func:`density_on_true_manifold`):

    - ``kl_true_model``: KL(true‖model) in nats on the grid points the learned manifold covers (within
      ``off_manifold_tolerance``), both densities renormalised there (None when it covers none);
    - ``model_mass_on_manifold``: Σ q(x) dA, the model's mass on the true manifold (1 for a perfect model);
    - ``true_mass_off_learned_manifold``: the true mass on the grid points the learned manifold misses;
    - ``manifold_density_points_per_s``: grid points whose on-manifold density was evaluated per second;
    - ``kl_true_model_deflated``, ``model_mass_on_manifold_deflated`` (DNF, :func:`deflated_log_prob`): the
      same with the paper's deflated ambient density (no renormalisation on covered points);
    - ``mean_sample_distance_to_manifold``: mean distance of ``n_samples`` model samples to the true
      manifold (exact for :class:`~mflow_cli.datasets.base.DistanceToManifold`, else to the nearest of
      20 × ``manifold_grid_points`` grid points);
    - manifolds of dimension ≤ 2 with :class:`~mflow_cli.datasets.base.ChartCoordinates`: :func:`chart_metrics`
      on a grid of ``manifold_grid_points`` cells (1-D) or ``chart_grid_size`` cells per polar angle (2-D),
      and for DNF models their ``_deflated`` counterparts.

    2-D data, with ``ambient_grid_size`` > 0, on ``ambient_grid_size``² points over [−grid_limit, grid_limit]²
    (the research code's 10,000-point spiral timing grid):

    - ``ambient_grid_points``: the number of grid points; ``ambient_grid_seconds``: seconds to evaluate the
      on-manifold density on them; ``ambient_grid_finite_fraction``: the fraction where it is finite.

    Non-finite values are reported as None.
    """
    torch.manual_seed(options.seed)
    batch_size = options.batch_size
    test = dataset.test_data().reshape(len(dataset.test_data()), -1)
    log_p, proj = manifold_log_prob(model, test, batch_size)
    metrics: dict[str, float | int | None] = {
        "n_test": len(test),
        "test_log_likelihood_manifold": float(log_p.mean()),
        "reconstruction_error": float((test - proj).pow(2).sum(1).mean()),
    }
    if model.has_ambient_density:
        noisy = test + model.noise_std * torch.randn_like(test)
        metrics["test_log_likelihood_ambient"] = float(ambient_log_prob(model, noisy, batch_size).mean())
    if isinstance(dataset, KnownDensity):
        x, log_true, weights = dataset.manifold_grid(options.manifold_grid_points)
        start = time.perf_counter()
        log_q, missed = density_on_true_manifold(model, x.float(), batch_size, options.off_manifold_tolerance)
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
        n_samples = options.n_samples
        with torch.no_grad():
            samples = model.sample(n_samples).reshape(n_samples, -1).cpu()
        if isinstance(dataset, DistanceToManifold):
            dist = dataset.distance_to_manifold(samples)
        else:
            dense, _, _ = dataset.manifold_grid(20 * options.manifold_grid_points)
            dist = torch.cdist(samples.double(), dense.double()).min(1).values
        metrics["mean_sample_distance_to_manifold"] = float(dist.mean())
        if isinstance(dataset, ChartCoordinates) and dataset.manifold_dim <= 2:
            size = options.manifold_grid_points if dataset.manifold_dim == 1 else options.chart_grid_size
            tolerance = options.off_manifold_tolerance
            metrics.update(chart_metrics(model, dataset, size, samples, batch_size, tolerance=tolerance))
            if has_deflated_density(model):
                metrics.update(chart_metrics(model, dataset, size, samples, batch_size, deflated=True))
    if options.ambient_grid_size > 0 and test.shape[1] == 2:
        grid = ambient_grid(options.grid_limit, options.ambient_grid_size)
        start = time.perf_counter()
        grid_log_p, _ = manifold_log_prob(model, grid, batch_size)
        metrics["ambient_grid_points"] = len(grid)
        metrics["ambient_grid_seconds"] = time.perf_counter() - start
        metrics["ambient_grid_finite_fraction"] = float(torch.isfinite(grid_log_p).float().mean())
    return finite_metrics(metrics)
