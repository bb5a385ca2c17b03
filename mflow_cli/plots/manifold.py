"""Figures for manifold models on vector data: training curves, samples over data, densities on grids
(:func:`plot_manifold`, figure options :class:`ManifoldFigures`; image data: :mod:`mflow_cli.plots.images`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..datasets.base import ChartCoordinates, Dataset, KnownDensity
from ..metrics.common import at_least
from ..metrics.manifold import (
    ManifoldEvaluation,
    ambient_grid,
    ambient_log_prob,
    deflated_log_prob,
    density_on_true_manifold,
    has_deflated_density,
    manifold_log_prob,
)
from ..models.interfaces import ManifoldModel
from .common import pyplot, save, training_curves


@dataclass(frozen=True)
class ManifoldFigures:
    r"""Settings only the figures of :func:`plot_manifold` use (the rest come from :class:`ManifoldEvaluation`).

    Arguments:
        grid_size: Points per axis of the log-density image over [−grid_limit, grid_limit]² (2-D data).
    """

    grid_size: int = 200

    def __post_init__(self) -> None:
        at_least("grid_size", self.grid_size, 2)


def plot_manifold(
    model: ManifoldModel,
    dataset: Dataset,
    records: list[dict],
    out_dir: Path,
    options: ManifoldEvaluation = ManifoldEvaluation(),
    figure: ManifoldFigures = ManifoldFigures(),
) -> list[Path]:
    """Draw the figures of a manifold model on vector data into ``out_dir``; returns their paths.

    - ``training_curves.png``: every logged training quantity per epoch, one colour per phase;
    - ``samples.png``: ``n_samples`` model samples over the test data (first two dimensions);
    - ``density_grid.png`` (2-D data): the learned log density on a ``grid_size``² grid over
      [−grid_limit, grid_limit]² (ambient where ``has_ambient_density``, else on-manifold at the projection);
    - ``density_on_manifold.png`` (1-D :class:`~mflow_cli.datasets.base.KnownDensity` manifolds): true and
      learned density along the arc length (0 where the learned manifold misses the true one by more than
      ``off_manifold_tolerance``), and the DNF's deflated density;
    - ``density_chart.png``, ``samples_chart.png`` (2-D manifolds with
      :class:`~mflow_cli.datasets.base.ChartCoordinates`): :func:`chart_figures` on a ``chart_grid_size`` grid.
    """
    plt = pyplot()
    paths = [training_curves(records, out_dir / "training_curves.png")]
    torch.manual_seed(options.seed)
    n_samples, grid_limit, batch_size = options.n_samples, options.grid_limit, options.batch_size
    grid_size = figure.grid_size
    test = dataset.test_data().reshape(len(dataset.test_data()), -1)
    with torch.no_grad():
        samples = model.sample(n_samples).reshape(n_samples, -1).cpu()

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(test[:, 0], test[:, 1], s=3, alpha=0.4, label="test data")
    ax.scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.4, label="model samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    ax.set_title("samples over data" + ("" if test.shape[1] == 2 else " (first two dims)"))
    paths.append(save(fig, out_dir / "samples.png"))

    if test.shape[1] == 2:
        grid = ambient_grid(grid_limit, grid_size)
        ambient = model.has_ambient_density
        log_p = ambient_log_prob(model, grid, batch_size) if ambient else manifold_log_prob(model, grid, batch_size)[0]
        fig, ax = plt.subplots(figsize=(5.5, 5))
        img = ax.imshow(
            log_p.reshape(grid_size, grid_size).clamp(min=-20).numpy(), origin="lower", cmap="viridis",
            extent=(-grid_limit, grid_limit, -grid_limit, grid_limit),
        )
        fig.colorbar(img, ax=ax, label="log density")
        ax.set_title("learned log density (" + ("ambient, inflated" if ambient else "on manifold, at projection") + ")")
        paths.append(save(fig, out_dir / "density_grid.png"))

    if isinstance(dataset, KnownDensity) and dataset.manifold_dim == 1:
        x, log_true, weights = dataset.manifold_grid(2000)
        log_q, _ = density_on_true_manifold(model, x.float(), batch_size, options.off_manifold_tolerance)
        arc = torch.cumsum(weights, 0)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(arc, log_true.exp(), label="true", lw=2)
        ax.plot(arc, log_q.exp(), label="model, on its manifold (0 where it misses)", lw=1.5, ls="--")
        if has_deflated_density(model):
            deflated = deflated_log_prob(model, x.float(), batch_size).exp()
            ax.plot(arc, deflated, label="model, deflated ambient", lw=1.2, ls=":")
        ax.set_xlabel("arc length along the true manifold")
        ax.set_ylabel("density on the manifold")
        ax.legend()
        paths.append(save(fig, out_dir / "density_on_manifold.png"))

    if isinstance(dataset, ChartCoordinates) and dataset.manifold_dim == 2:
        paths.extend(
            chart_figures(model, dataset, test, samples, out_dir, options.chart_grid_size,
                          options.off_manifold_tolerance, batch_size)
        )
    return [p for p in paths if p is not None]


def chart_figures(
    model: ManifoldModel, dataset: ChartCoordinates, test, samples, out_dir: Path, size: int, tolerance: float = 0.1,
    batch_size: int = 4096,
) -> list[Path]:
    """Sphere-like 2-D manifolds: true vs learned density on the θ/φ map, and samples over data there."""
    plt = pyplot()
    grid = dataset.chart_grid(size)
    panels = [("true density", grid.log_p_manifold())]
    log_q, _ = density_on_true_manifold(model, grid.x.float(), batch_size, tolerance)
    panels.append(("learned, on manifold", log_q))
    if has_deflated_density(model):
        panels.append(("learned, deflated ambient", deflated_log_prob(model, grid.x.float(), batch_size)))
    extent = (0, float(grid.axes[0][-1] + grid.widths[0] / 2), 0, float(grid.axes[1][-1] + grid.widths[1] / 2))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), sharey=True)
    images = [log_p.double().exp().reshape(grid.shape).T.numpy() for _, log_p in panels]
    vmax = max(img.max() for img in images)
    for ax, img, (title, log_p) in zip(axes, images, panels, strict=True):
        mass = float((log_p.double().exp() * grid.manifold_weights()).sum())
        im = ax.imshow(img, origin="lower", extent=extent, aspect="auto", vmin=0, vmax=vmax, cmap="viridis")
        ax.set_xlabel("θ (polar)")
        ax.set_title(f"{title} (mass {mass:.3f})")
    axes[0].set_ylabel("φ (azimuth)")
    fig.colorbar(im, ax=axes[-1], label="density w.r.t. area")
    paths = [save(fig, out_dir / "density_chart.png")]

    data_a, model_a = dataset.angles(test), dataset.angles(samples)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(data_a[:, 0], data_a[:, 1], s=3, alpha=0.4, label="test data")
    ax.scatter(model_a[:, 0], model_a[:, 1], s=3, alpha=0.4, label="model samples")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel("θ (polar)")
    ax.set_ylabel("φ (azimuth)")
    ax.legend(loc="upper right")
    ax.set_title("samples over data on the θ/φ chart")
    paths.append(save(fig, out_dir / "samples_chart.png"))
    return paths
