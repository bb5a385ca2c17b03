"""Figures for VQ-Flows: training curves, samples (coloured by chart) next to the data, image grids
(:func:`plot_vq_flow`, figure options :class:`AtlasFigures`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..datasets.base import Dataset, PixelData
from ..metrics.common import at_least
from ..metrics.vq_flow import AtlasEvaluation
from ..models.interfaces import AtlasModel
from .common import image_grid, pyplot, save, training_curves

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


def scatter3d(ax, x: torch.Tensor, title: str, colour=None) -> None:
    """A 3-D scatter of points (N, 3) on the toy shapes' fixed axes, optionally coloured (tab10)."""
    ax.scatter(x[:, 0], x[:, 1], x[:, 2], s=1.5, alpha=0.5, c=colour, cmap="tab10" if colour is not None else None)
    ax.set_title(title)
    ax.set_xlim(-2, 2.2)
    ax.set_ylim(-2, 2)
    ax.set_zlim(-1.5, 1.5)
    ax.view_init(elev=25, azim=-60)


def samples_next_to_data(panels: list[tuple[str, torch.Tensor, torch.Tensor | None]], path: Path) -> Path:
    """One 3-D scatter per (title, points (N, 3), colours or None), side by side."""
    plt = pyplot()
    fig = plt.figure(figsize=(4.2 * len(panels), 4.2))
    for i, (title, x, colour) in enumerate(panels):
        scatter3d(fig.add_subplot(1, len(panels), i + 1, projection="3d"), x, title, colour)
    return save(fig, path)


def plot_vq_flow(
    model: AtlasModel,
    dataset: Dataset,
    records: list[dict],
    out_dir: Path,
    options: AtlasEvaluation = AtlasEvaluation(),
    figure: AtlasFigures = AtlasFigures(),
) -> list[Path]:
    """Draw the figures of a VQ-Flow (or classic flow) into ``out_dir``; returns their paths.

    - ``training_curves.png``: every logged training quantity per epoch, one colour per phase;
    - ``samples.png``: for 3-D data, the test data (coloured by MAP chart when K > 1) next to ``n_samples``
      model samples (coloured by the chart they were drawn from); for
      :class:`~mflow_cli.datasets.base.PixelData`, a grid of up to 64 samples.
    """
    torch.manual_seed(options.seed)
    paths = [training_curves(records, out_dir / "training_curves.png")]
    with torch.no_grad():
        x, k, _ = model.sample_charts(figure.n_samples)
    test = dataset.test_data()
    if x.shape[1] == 3:
        with torch.no_grad():
            data_chart = model.encode(test)["chart_map"] if model.num_charts > 1 else None
        paths.append(
            samples_next_to_data(
                [("test data" + (" (MAP chart)" if data_chart is not None else ""), test, data_chart),
                 (f"samples, {model.num_charts} chart(s)", x, k.float() if model.num_charts > 1 else None)],
                out_dir / "samples.png",
            )
        )
    elif isinstance(dataset, PixelData):
        images = dataset.pixels.to_images(x[:MAX_GRID_IMAGES])
        paths.append(image_grid(images, out_dir / "samples.png", f"samples ({model.num_charts} chart(s))"))
    return [p for p in paths if p is not None]
