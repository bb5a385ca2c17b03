"""Figures on image manifolds: sample grid, reconstructions, latent interpolation strips, training curves.

Called by the ``manifold`` plotter when the dataset is an :class:`~mflow_cli.datasets.images.ImageManifold`.
Interpolations run in the manifold coordinates: u = project(x) of two test images, then g((1 − t) u_a + t u_b)
for t from 0 to 1 (the DNF paper's latent interpolations), shown between the two originals.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..datasets.images import ImageManifold
from .common import pyplot, save, training_curves


def _grid(images: torch.Tensor, rows: int, cols: int, path: Path, title: str, row_labels: list[str] | None = None):
    """Draw (rows·cols, R, R, 3) images in [0, 1] as a grid."""
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            ax.imshow(images[i].numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if row_labels and i % cols == 0:
            ax.set_ylabel(row_labels[i // cols], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def interpolations(model, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
    """Decoded images (n, steps, D) along the straight latent line from project(x_a) to project(x_b)."""
    with torch.no_grad():
        u_a, u_b = model.project(x_a)[0], model.project(x_b)[0]
        t = torch.linspace(0, 1, steps, device=u_a.device)[None, :, None]
        u = (1 - t) * u_a[:, None] + t * u_b[:, None]
        return model.decode(u.reshape(-1, u.shape[-1])).reshape(len(x_a), steps, -1).cpu()


def plot_images(
    model,
    dataset: ImageManifold,
    records: list[dict],
    out_dir: Path,
    n_samples: int = 64,
    n_interpolations: int = 4,
    interpolation_steps: int = 8,
    seed: int = 0,
) -> list[Path]:
    torch.manual_seed(seed)
    paths = [training_curves(records, out_dir / "training_curves.png")]
    device = next(model.parameters()).device
    n = max(1, min(n_samples, 64))
    cols = min(8, n)
    with torch.no_grad():
        samples = model.sample(n).cpu()
    paths.append(_grid(dataset.to_unit(samples), -(-n // cols), cols, out_dir / "samples.png", "model samples"))

    test = dataset.test_data()
    k = min(8, len(test))
    with torch.no_grad():
        recon = torch.cat([model.project(test[i : i + 1].to(device))[0] for i in range(k)])
        recon = model.decode(recon).cpu()
    both = torch.cat([dataset.to_unit(test[:k]), dataset.to_unit(recon)])
    paths.append(_grid(both, 2, k, out_dir / "reconstructions.png", "test images (top) and g(u(x)) (bottom)"))

    m = min(n_interpolations, len(test) // 2)
    if m > 0:
        x_a, x_b = test[:m].to(device), test[m : 2 * m].to(device)
        strips = interpolations(model, x_a, x_b, interpolation_steps)
        rows = [torch.cat([dataset.to_unit(x_a[i : i + 1].cpu()), dataset.to_unit(strips[i]),
                           dataset.to_unit(x_b[i : i + 1].cpu())]) for i in range(m)]
        paths.append(
            _grid(torch.cat(rows), m, interpolation_steps + 2, out_dir / "interpolations.png",
                  "latent interpolations: test image, g((1−t)u_a + t u_b) for t = 0…1, test image")
        )
    return [p for p in paths if p is not None]
