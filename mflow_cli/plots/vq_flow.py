"""Figures for VQ-Flows: training curves, samples (coloured by chart) next to the data, image grids
(:func:`plot_vq_flow`, figure options :class:`AtlasFigures`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..datasets.base import Dataset, PixelData
from ..datasets.toy3d import Toy3D, sample_support
from ..metrics.common import at_least
from ..metrics.vq_flow import AtlasEvaluation
from ..models.interfaces import AtlasModel
from .common import image_grid, pyplot, sample_subset, samples_to_draw, save, training_curves

MAX_GRID_IMAGES = 64


@dataclass(frozen=True)
class AtlasFigures:
    r"""Settings only the figures of :func:`plot_vq_flow` use (the seed comes from :class:`AtlasEvaluation`).

    Arguments:
        n_samples: Model samples drawn for the figures (3-D scatter; the image grid shows at most 64);
            a display choice, apart from the evaluation's ``n_samples``.
    """

    n_samples: int = 3000

    def __post_init__(self) -> None:
        at_least("n_samples", self.n_samples, 1)


SUPPORT_POINTS = 3000
"""Noise-free points of a toy shape's support drawn as the true manifold."""


def scatter3d(ax, x: torch.Tensor, title: str, colour: torch.Tensor | None, limits, size: float,
              support: torch.Tensor | None) -> None:
    """A 3-D scatter of points (N, 3) within ``limits``, coloured by chart (tab10) or plain, over the true
    support (faint grey points) when it is known."""
    if support is not None:
        ax.scatter(support[:, 0], support[:, 1], support[:, 2], s=0.8, color="0.5", alpha=0.35, lw=0,
                   depthshade=False)
    inside = torch.stack([(x[:, i] >= lo) & (x[:, i] <= hi) for i, (lo, hi) in enumerate(limits)]).all(0)
    x = x[inside]  # 3-D axes do not clip what lies outside them
    if colour is None:
        ax.scatter(x[:, 0], x[:, 1], x[:, 2], s=size, alpha=0.8, lw=0, color="C0", depthshade=False)
    else:
        colour = colour[inside]
        for k in torch.unique(colour).tolist():
            sel = colour == k
            ax.scatter(x[sel, 0], x[sel, 1], x[sel, 2], s=size, alpha=0.8, lw=0, color=f"C{int(k) % 10}",
                       depthshade=False, label=f"chart {int(k)}")
    missing = int((~inside).sum())
    ax.set_title(title + (f"\n({missing} outside the view)" if missing else ""), fontsize=10)
    for i, (name, (lo, hi)) in enumerate(zip(("x₁", "x₂", "x₃"), limits, strict=True)):
        getattr(ax, f"set_{'xyz'[i]}lim")(lo, hi)
        getattr(ax, f"set_{'xyz'[i]}label")(f"{name} (data coordinate)", fontsize=8)
    ax.set_box_aspect([hi - lo for lo, hi in limits])
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(pyplot().MaxNLocator(5))
        axis.set_tick_params(labelsize=8)
    ax.view_init(elev=25, azim=-60)


def view_limits(reference: torch.Tensor) -> list[tuple[float, float]]:
    """Axis limits (low, high) per coordinate: the range of ``reference`` (N, 3), widened by 15 %."""
    low, high = reference.min(0).values, reference.max(0).values
    pad = 0.15 * (high - low).clamp(min=1e-6)
    return [(float(a), float(b)) for a, b in zip(low - pad, high + pad, strict=True)]


def samples_next_to_data(panels: list[tuple[str, torch.Tensor, torch.Tensor | None, float]], path: Path,
                         support: torch.Tensor | None = None, title: str = "") -> Path:
    """One 3-D scatter per (title, points (N, 3), chart per point or None, marker size), side by side, on
    the same axes limits (the first panel's range, widened by 15 %); a chart legend right of the last panel."""
    plt = pyplot()
    limits = view_limits(panels[0][1] if support is None else torch.cat([panels[0][1], support]))
    fig = plt.figure(figsize=(4.8 * len(panels) + 1.2, 4.6))
    for i, (name, x, colour, size) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d")
        scatter3d(ax, x, name, colour, limits, size, support)
    handles, labels = fig.axes[-1].get_legend_handles_labels()
    if support is not None:
        handles.append(plt.Line2D([], [], ls="", marker=".", markersize=2, color="0.5"))
        labels.append("true support (noise-free)")
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=3,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def plot_vq_flow(
    model: AtlasModel,
    dataset: Dataset,
    records: list[dict],
    out_dir: Path,
    options: AtlasEvaluation = AtlasEvaluation(),
    figure: AtlasFigures = AtlasFigures(),
    samples: torch.Tensor | None = None,
) -> list[Path]:
    """Draw the figures of a VQ-Flow (or classic flow) into ``out_dir``; returns their paths.

    ``samples`` (N, *data_shape) or (N, D): draw these (e.g. a sample file of the user's) instead of
    ``n_samples`` fresh model samples (coloured by their MAP chart, as the data).

    - ``training_curves.png``: every logged training quantity per epoch (:func:`~.common.training_curves`);
    - ``samples.png``: for 3-D data, the test data (coloured by MAP chart when K > 1) next to the model
      samples (at most half as many, smaller, coloured by the chart they were drawn from), over the toy
      shape's noise-free support; for :class:`~mflow_cli.datasets.base.PixelData`, a grid of up to 64 samples.
    """
    torch.manual_seed(options.seed)
    paths = [training_curves(records, out_dir / "training_curves.png")]
    multi = model.num_charts > 1
    test = dataset.test_data()
    if samples is None:
        with torch.no_grad():
            x, k, _ = model.sample_charts(figure.n_samples)
        x, k, source = x.reshape(len(x), -1).cpu(), k.cpu(), "drawn"
    else:
        x = samples_to_draw(model, samples, len(samples), dataset.data_shape).reshape(len(samples), -1)
        k, source = None, "given"
    if tuple(dataset.data_shape) == (3,):
        with torch.no_grad():
            data_chart = model.encode(test)["chart_map"].cpu() if multi else None
            if multi and k is None:
                k = model.encode(x)["chart_map"].cpu()
        n_data = len(test)
        shown = sample_subset(x, n_data)
        support = sample_support(dataset.shape, SUPPORT_POINTS, torch.Generator().manual_seed(0)).float() if (
            isinstance(dataset, Toy3D)) else None
        chart_word = "chart drawn from" if source == "drawn" else "MAP chart"
        paths.append(
            samples_next_to_data(
                [(f"test data ({n_data})" + (", colour: MAP chart" if multi else ""), test, data_chart, 6.0),
                 (f"model samples ({len(shown)} of {len(x)}, {source})" + (f", colour: {chart_word}" if multi else ""),
                  shown, k[: len(shown)] if multi else None, 3.0)],
                out_dir / "samples.png", support,
                f"{'VQ-Flow' if multi else 'classic flow'} with {model.num_charts} chart(s): samples next to the data",
            )
        )
    elif isinstance(dataset, PixelData):
        images = dataset.pixels.to_images(x[:MAX_GRID_IMAGES].reshape(-1, *dataset.data_shape))
        paths.append(image_grid(images, out_dir / "samples.png",
                                f"model samples ({len(images)} {source}, {model.num_charts} chart(s))"))
    return [p for p in paths if p is not None]
