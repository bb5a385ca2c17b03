"""Figures for manifold models on vector data: training curves, samples over data, densities on grids
(:func:`plot_manifold`, figure options :class:`ManifoldFigures`; image data: :mod:`mflow_cli.plots.images`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform

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
from ..models.manifold_flow import ManifoldFlow
from .common import legend_outside, pyplot, sample_subset, samples_to_draw, save, training_curves


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
    samples: torch.Tensor | None = None,
) -> list[Path]:
    """Draw the figures of a manifold model on vector data into ``out_dir``; returns their paths.

    ``samples`` (N, *data_shape) or (N, D): draw these (e.g. a sample file of the user's) instead of
    ``n_samples`` fresh model samples.

    - ``training_curves.png``: every logged training quantity per epoch (:func:`~.common.training_curves`);
    - ``samples.png``: model samples (at most half as many as test points, smaller) over the test data and,
      where the dataset knows it (:class:`~mflow_cli.datasets.base.KnownDensity`), the true manifold; 3-D data
      in 3-D, higher dimensions in their first two;
    - ``density_grid.png`` (2-D data): the learned log density on a ``grid_size``² grid over
      [−grid_limit, grid_limit]² (ambient where ``has_ambient_density``, else on-manifold at the projection),
      clamped 25 nats below its maximum, with the true manifold;
    - ``density_on_manifold.png`` (1-D :class:`~mflow_cli.datasets.base.KnownDensity` manifolds): true and
      learned density along the arc length up to where 99.9 % of the true mass lies (0 where the learned
      manifold misses the true one by more than ``off_manifold_tolerance``), and the DNF's deflated density,
      on a linear and a logarithmic axis;
    - ``density_chart.png``, ``samples_chart.png`` (2-D manifolds with
      :class:`~mflow_cli.datasets.base.ChartCoordinates`): :func:`chart_figures` on a ``chart_grid_size`` grid.
    """
    paths = [training_curves(records, out_dir / "training_curves.png")]
    torch.manual_seed(options.seed)
    test = dataset.test_data().reshape(len(dataset.test_data()), -1)
    label = "model samples" if samples is None else "given samples"
    samples = samples_to_draw(model, samples, options.n_samples, dataset.data_shape)
    true_manifold = true_manifold_points(dataset) if isinstance(dataset, KnownDensity) else None
    paths.append(samples_figure(test, samples, true_manifold, dataset, out_dir / "samples.png", label))
    if test.shape[1] == 2:
        paths.append(density_grid_figure(model, true_manifold, options, figure, out_dir / "density_grid.png"))
    if isinstance(dataset, KnownDensity) and dataset.manifold_dim == 1:
        paths.append(density_on_manifold_figure(model, dataset, options, out_dir / "density_on_manifold.png"))
    if isinstance(dataset, ChartCoordinates) and dataset.manifold_dim == 2:
        paths.extend(
            chart_figures(model, dataset, test, samples, out_dir, options.chart_grid_size,
                          options.off_manifold_tolerance, options.batch_size, label)
        )
    return [p for p in paths if p is not None]


TRUE_MANIFOLD_POINTS = 2000
"""Points of ``dataset.manifold_grid`` drawn as the true manifold."""

LOG_DENSITY_RANGE = 25.0
"""The density image shows log densities down to this many nats below their maximum (lower ones clamped)."""


def true_mass_range(cdf: torch.Tensor, mass: float = 0.999) -> tuple[int, int]:
    """First and last index of the grid cells holding the central ``mass`` of a CDF along a 1-D grid."""
    tail = torch.tensor([(1 - mass) / 2, (1 + mass) / 2], dtype=cdf.dtype)
    first, last = torch.searchsorted(cdf, tail).tolist()
    return first, min(last, len(cdf) - 1)


def true_manifold_points(dataset: KnownDensity) -> torch.Tensor:
    """Points (N, D) of the true manifold to draw: ``dataset.manifold_grid`` points, for an open curve
    (spiral) only up to where 99.9 % of the true mass lies (its grid runs on into the empty tail)."""
    x, log_p, weights = dataset.manifold_grid(TRUE_MANIFOLD_POINTS)
    if dataset.manifold_dim == 1:
        spacing = (x[1:] - x[:-1]).norm(dim=1).max()
        closed = (x[0] - x[-1]).norm() < 2 * spacing
        if not closed:
            mass = log_p.exp() * weights
            _, last = true_mass_range(torch.cumsum(mass, 0) / mass.sum())
            x = x[: last + 1]
    return x.float()


def _view_limits(points: torch.Tensor, pad: float = 0.15) -> list[tuple[float, float]]:
    """Per coordinate the range of ``points`` widened by ``pad`` of its width on each side."""
    low, high = points.min(0).values, points.max(0).values
    width = (high - low).clamp(min=1e-6)
    return [(float(a), float(b)) for a, b in zip(low - pad * width, high + pad * width, strict=True)]


def _manifold_name(dataset: Dataset) -> str:
    return type(dataset).__name__


def samples_figure(test: torch.Tensor, samples: torch.Tensor, true_manifold: torch.Tensor | None,
                   dataset: Dataset, path: Path, label: str = "model samples") -> Path:
    """Test data, fewer and smaller model samples on top, and the true manifold (a curve for 1-D manifolds,
    faint points otherwise); 3-D data on 3-D axes, others in their first two coordinates."""
    plt = pyplot()
    shown = sample_subset(samples, len(test))
    dim = test.shape[1]
    three_d = dim == 3
    fig = plt.figure(figsize=(6.2, 5))
    ax = fig.add_subplot(projection="3d") if three_d else fig.add_subplot()
    axes = (0, 1, 2) if three_d else (0, 1)
    if true_manifold is not None:
        one_d = isinstance(dataset, KnownDensity) and dataset.manifold_dim == 1
        coords = [true_manifold[:, i] for i in axes]
        if one_d:
            ax.plot(*coords, color="0.2", lw=1.0, zorder=1, label="true manifold")
        else:
            ax.scatter(*coords, s=0.3, color="0.55", alpha=0.25, zorder=1, label="true manifold")
    depth = {"depthshade": False} if three_d else {}
    ax.scatter(*[test[:, i] for i in axes], s=6, alpha=0.5, color="C0", lw=0, zorder=2, **depth,
               label=f"test data ({len(test)})")
    reference = test if true_manifold is None else torch.cat([test, true_manifold[:, : test.shape[1]]])
    limits = _view_limits(reference[:, list(axes)])
    inside = torch.stack([(shown[:, i] >= lo) & (shown[:, i] <= hi)
                          for i, (lo, hi) in zip(axes, limits, strict=True)]).all(0)
    outside = int((~inside).sum())
    drawn = shown[inside] if three_d else shown  # 3-D axes do not clip what lies outside them
    ax.scatter(*[drawn[:, i] for i in axes], s=3 if three_d else 1.5, alpha=0.9, color="C3", lw=0, zorder=3, **depth,
               label=f"{label} ({len(shown)} of {len(samples)})")
    names = [f"x{'₁₂₃'[i]}" for i in axes]
    ax.set_xlabel(names[0] + " (data coordinate)")
    ax.set_ylabel(names[1] + " (data coordinate)")
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    if three_d:
        ax.set_zlim(*limits[2])
        ax.set_zlabel(names[2] + " (data coordinate)")
        ax.set_box_aspect([hi - lo for lo, hi in limits])
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(pyplot().MaxNLocator(5))
    else:
        ax.set_aspect("equal")
    what = "" if dim <= 3 else f", first two of {dim} dims"
    note = f"\n{outside} of the {len(shown)} samples lie outside the view" if outside else ""
    ax.set_title(f"{label} over test data ({_manifold_name(dataset)}{what}){note}", fontsize=10)
    legend_outside(ax)
    return save(fig, path)


def outer_spline_range(model: ManifoldModel) -> float | None:
    """The tail bound B of the outer flow's rational-quadratic splines (``spline_range``), None without them."""
    if not isinstance(model, ManifoldFlow):
        return None
    bounds = [m.tail_bound for m in model.outer.modules() if isinstance(m, PiecewiseRationalQuadraticCouplingTransform)]
    return float(bounds[0]) if bounds else None


def density_grid_figure(model: ManifoldModel, true_manifold: torch.Tensor | None, options: ManifoldEvaluation,
                        figure: ManifoldFigures, path: Path) -> Path:
    """The learned log density over the square [−grid_limit, grid_limit]² with the true manifold drawn on it."""
    plt = pyplot()
    size, limit = figure.grid_size, options.grid_limit
    grid = ambient_grid(limit, size)
    ambient = model.has_ambient_density
    if ambient:
        log_p = ambient_log_prob(model, grid, options.batch_size)
    else:
        log_p = manifold_log_prob(model, grid, options.batch_size)[0]
    log_p = log_p.double()
    finite = log_p[torch.isfinite(log_p)]
    top = float(finite.max()) if len(finite) else 0.0
    floor = top - LOG_DENSITY_RANGE
    clamped = bool((~torch.isfinite(log_p)).any() or (log_p < floor).any())
    shown = torch.where(torch.isfinite(log_p), log_p, torch.full_like(log_p, floor)).clamp(min=floor)
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    img = ax.imshow(shown.reshape(size, size).numpy(), origin="lower", cmap="viridis", interpolation="nearest",
                    extent=(-limit, limit, -limit, limit))
    label = "log density (nats)" + (f", values below {floor:.1f} shown as {floor:.1f}" if clamped else "")
    fig.colorbar(img, ax=ax, label=label, shrink=0.85)
    if true_manifold is not None:
        ax.plot(true_manifold[:, 0], true_manifold[:, 1], color="white", lw=0.7, ls="--", label="true manifold")
        ax.legend(loc="lower left", fontsize=8, framealpha=0.7)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_xlabel("x₁ (data coordinate)")
    ax.set_ylabel("x₂ (data coordinate)")
    kind = f"ambient density of data inflated by σ = {model.noise_std:g}" if ambient and model.noise_std > 0 else (
        "ambient density" if ambient else "on-manifold density at each point's projection")
    ax.set_title(f"learned log density on a {size}×{size} grid: {kind}", fontsize=9)
    bound = outer_spline_range(model)
    if bound is not None:
        fig.text(0.01, -0.01, f"Straight creases, where visible, are where the outer flow's splines reach their tail "
                 f"bound ±{bound:g} (spline_range)\nand continue linearly (after its linear layers, so not always "
                 "along the axes).", fontsize=7, va="top", ha="left")
    return save(fig, path)


def density_on_manifold_figure(model: ManifoldModel, dataset: KnownDensity, options: ManifoldEvaluation,
                               path: Path) -> Path:
    """True and learned density along the arc length of a 1-D true manifold, linear and logarithmic; the axis
    ends where 99.9 % of the true mass lies; the deflated density (DNF) is drawn last, dashed."""
    plt = pyplot()
    x, log_true, weights = dataset.manifold_grid(TRUE_MANIFOLD_POINTS)
    log_q, missed = density_on_true_manifold(model, x.float(), options.batch_size, options.off_manifold_tolerance)
    arc = (torch.cumsum(weights, 0) - weights / 2).numpy()
    true = log_true.exp()
    first, last = true_mass_range(torch.cumsum(true * weights, 0) / (true * weights).sum())
    start, end = float(arc[first] - weights[first] / 2), float(arc[last] + weights[last] / 2)  # cell edges
    curves = [("true density", true, dict(color="black", lw=2.4, alpha=0.55, zorder=2)),
              ("model, on its manifold (0 where it misses by > tolerance)", log_q.exp(),
               dict(color="C0", lw=1.3, zorder=3))]
    if has_deflated_density(model):
        curves.append(("model, deflated ambient density (DNF)", deflated_log_prob(model, x.float(),
                                                                                 options.batch_size).exp(),
                       dict(color="C3", lw=1.3, ls="--", zorder=4)))
    fig, (lin, log) = plt.subplots(2, 1, figsize=(7.5, 5.6), sharex=True)
    for ax in (lin, log):
        for label, density, style in curves:
            ax.plot(arc, density.numpy(), label=label, **style)
        ax.grid(alpha=0.3)
    inside = (torch.from_numpy(arc) >= start) & (torch.from_numpy(arc) <= end)
    top = max(float(d[inside].max()) for _, d, _ in curves)
    lin.set_ylim(0, 1.08 * top)
    log.set_yscale("log")
    log.set_ylim(max(float(true[inside].min()) / 100, top * 1e-8), 3 * top)
    log.set_xlim(start, end)
    lin.set_ylabel("density per unit arc length")
    log.set_ylabel("density (log scale)")
    log.set_xlabel("arc length along the true manifold (data units); the axis spans the central 99.9 % of the true "
                   "mass")
    share = float((true * weights)[missed].sum() / (true * weights).sum())
    lin.set_title(f"density along the true manifold ({_manifold_name(dataset)}); the learned manifold misses "
                  f"{100 * share:.1f} % of the true mass", fontsize=9)
    log.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), fontsize=8, ncol=2, frameon=False)
    return save(fig, path)


def chart_figures(
    model: ManifoldModel, dataset: ChartCoordinates, test, samples, out_dir: Path, size: int, tolerance: float = 0.1,
    batch_size: int = 4096, label: str = "model samples",
) -> list[Path]:
    """Sphere-like 2-D manifolds: true vs learned density on the θ/φ map (one colour scale), and samples over
    data there, with contours of the true density."""
    plt = pyplot()
    grid = dataset.chart_grid(size)
    panels = [("true density", grid.log_p_manifold())]
    log_q, _ = density_on_true_manifold(model, grid.x.float(), batch_size, tolerance)
    panels.append(("learned, on its manifold", log_q))
    if has_deflated_density(model):
        panels.append(("learned, deflated ambient (DNF)", deflated_log_prob(model, grid.x.float(), batch_size)))
    extent = (0, float(grid.axes[0][-1] + grid.widths[0] / 2), 0, float(grid.axes[1][-1] + grid.widths[1] / 2))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1, 4.4), sharey=True, squeeze=False)
    images = [log_p.double().exp().reshape(grid.shape).T.numpy() for _, log_p in panels]
    vmax = max(img.max() for img in images)
    for ax, img, (title, log_p) in zip(axes[0], images, panels, strict=True):
        mass = float((log_p.double().exp() * grid.manifold_weights()).sum())
        im = ax.imshow(img, origin="lower", extent=extent, aspect="auto", vmin=0, vmax=vmax, cmap="viridis",
                       interpolation="nearest")
        ax.set_xlabel("θ, polar angle (rad)")
        ax.set_title(f"{title}\n(mass on the grid {mass:.3f})", fontsize=9)
    axes[0, 0].set_ylabel("φ, azimuth (rad)")
    fig.colorbar(im, ax=list(axes[0]), label="density per unit area", shrink=0.9)
    fig.suptitle(f"density on the θ/φ chart of the true manifold ({_manifold_name(dataset)}), "
                 f"{grid.shape[0]}×{grid.shape[1]} cells", fontsize=10, y=1.04)
    fig.savefig(out_dir / "density_chart.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    paths = [out_dir / "density_chart.png"]

    data_a = dataset.angles(test)
    shown = sample_subset(samples, len(test))
    model_a = dataset.angles(shown)
    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    theta, phi = (a.numpy() for a in grid.axes)
    ax.contour(theta, phi, images[0], levels=5, colors="0.4", linewidths=0.7, zorder=1)
    ax.scatter(data_a[:, 0], data_a[:, 1], s=6, alpha=0.5, lw=0, color="C0", zorder=2,
               label=f"test data ({len(test)})")
    ax.scatter(model_a[:, 0], model_a[:, 1], s=1.5, alpha=0.8, lw=0, color="C3", zorder=3,
               label=f"{label} ({len(shown)} of {len(samples)})")
    ax.plot([], [], color="0.4", lw=0.7, label="true density contours")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel("θ, polar angle (rad)")
    ax.set_ylabel("φ, azimuth (rad)")
    legend_outside(ax)
    ax.set_title(f"{label} over test data on the θ/φ chart ({_manifold_name(dataset)})", fontsize=10)
    paths.append(save(fig, out_dir / "samples_chart.png"))
    return paths
