"""Figures for VQ-Flows: training curves, samples (coloured by chart) next to the data, image grids."""

from __future__ import annotations

from pathlib import Path

import torch

from ..datasets.base import Dataset
from ..metrics.vq_flow import to_images
from .common import pyplot, save, training_curves


def scatter3d(ax, x: torch.Tensor, title: str, colour=None) -> None:
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


def image_grid(images: torch.Tensor, path: Path, title: str, rows: int = 8) -> Path:
    """A rows × rows grid of images (N, C, H, W) in [0, 1]."""
    plt = pyplot()
    n = min(rows * rows, len(images))
    fig, axes = plt.subplots(rows, rows, figsize=(rows, rows))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i]
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
    fig.suptitle(title)
    return save(fig, path)


def plot_vq_flow(
    model, dataset: Dataset, records: list[dict], out_dir: Path, n_samples: int = 3000, seed: int = 0
) -> list[Path]:
    torch.manual_seed(seed)
    paths = [training_curves(records, out_dir / "training_curves.png")]
    with torch.no_grad():
        x, k, _ = model.sample_charts(n_samples)
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
    elif len(model.data_shape) == 3:
        imgs = to_images(dataset, x.reshape(-1, *model.data_shape))
        paths.append(image_grid(imgs, out_dir / "samples.png", f"samples ({model.num_charts} chart(s))"))
    return [p for p in paths if p is not None]
