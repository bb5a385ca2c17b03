"""Figures for manifold flows: training curves, samples over data, densities on grids."""

from __future__ import annotations

from pathlib import Path

import torch

from ..datasets.base import Dataset, Simulator
from ..metrics.manifold import (
    ambient_grid,
    ambient_log_prob,
    deflated_log_prob,
    density_on_true_manifold,
    has_deflated_density,
    manifold_log_prob,
)
from .common import pyplot, save, training_curves


def plot_manifold(
    model,
    dataset: Dataset,
    records: list[dict],
    out_dir: Path,
    n_samples: int = 2000,
    grid_size: int = 200,
    grid_limit: float = 4.0,
    seed: int = 0,
    chart_grid_size: int = 60,
    off_manifold_tolerance: float = 0.1,
) -> list[Path]:
    if getattr(dataset, "is_image", False):  # image manifolds: see plots/images.py
        from .images import plot_images

        return plot_images(model, dataset, records, out_dir, n_samples=n_samples, seed=seed)
    plt = pyplot()
    paths = [training_curves(records, out_dir / "training_curves.png")]
    torch.manual_seed(seed)
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
        ambient = getattr(model, "has_ambient_density", False)
        log_p = ambient_log_prob(model, grid, 4096) if ambient else manifold_log_prob(model, grid, 4096)[0]
        fig, ax = plt.subplots(figsize=(5.5, 5))
        img = ax.imshow(
            log_p.reshape(grid_size, grid_size).clamp(min=-20).numpy(), origin="lower", cmap="viridis",
            extent=(-grid_limit, grid_limit, -grid_limit, grid_limit),
        )
        fig.colorbar(img, ax=ax, label="log density")
        ax.set_title("learned log density (" + ("ambient, inflated" if ambient else "on manifold, at projection") + ")")
        paths.append(save(fig, out_dir / "density_grid.png"))

    if isinstance(dataset, Simulator) and dataset.manifold_dim == 1:
        x, log_true, weights = dataset.manifold_grid(2000)
        log_q, _ = density_on_true_manifold(model, x.float(), 4096, off_manifold_tolerance)
        arc = torch.cumsum(weights, 0)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(arc, log_true.exp(), label="true", lw=2)
        ax.plot(arc, log_q.exp(), label="model, on its manifold (0 where it misses)", lw=1.5, ls="--")
        if has_deflated_density(model):
            deflated = deflated_log_prob(model, x.float(), 4096).exp()
            ax.plot(arc, deflated, label="model, deflated ambient", lw=1.2, ls=":")
        ax.set_xlabel("arc length along the true manifold")
        ax.set_ylabel("density on the manifold")
        ax.legend()
        paths.append(save(fig, out_dir / "density_on_manifold.png"))

    if isinstance(dataset, Simulator) and dataset.manifold_dim == 2 and hasattr(dataset, "chart_grid"):
        paths.extend(chart_figures(model, dataset, test, samples, out_dir, chart_grid_size, off_manifold_tolerance))
    return [p for p in paths if p is not None]


def chart_figures(
    model, dataset: Simulator, test, samples, out_dir: Path, size: int, tolerance: float = 0.1
) -> list[Path]:
    """Sphere-like 2-D manifolds: true vs learned density on the θ/φ map, and samples over data there."""
    plt = pyplot()
    grid = dataset.chart_grid(size)
    panels = [("true density", grid.log_p_manifold())]
    log_q, _ = density_on_true_manifold(model, grid.x.float(), 4096, tolerance)
    panels.append(("learned, on manifold", log_q))
    if has_deflated_density(model):
        panels.append(("learned, deflated ambient", deflated_log_prob(model, grid.x.float(), 4096)))
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
