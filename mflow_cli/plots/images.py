"""Figures of manifold models on image manifolds: samples, reconstructions, latent interpolations, training
curves (:func:`plot_images`, figure options :class:`ImageFigures`).

The catalog picks :func:`plot_images` for every manifold model on a :class:`~mflow_cli.datasets.base.PixelData`
dataset. Interpolations run in the manifold coordinates: u = project(x) of two test images, then
g((1 − t) u_a + t u_b) for t from 0 to 1 (the DNF paper's latent interpolations), shown between the two originals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..datasets.base import PixelData
from ..metrics.common import at_least, model_device
from ..metrics.images import ImageEvaluation
from ..models.interfaces import ManifoldModel
from .common import image_grid, training_curves

MAX_GRID_IMAGES = 64


@dataclass(frozen=True)
class ImageFigures:
    r"""Settings only the figures of :func:`plot_images` use (the seed comes from :class:`ImageEvaluation`).

    Arguments:
        n_samples: Model samples in the sample grid (at most 64).
        n_interpolations: Pairs of test images interpolated between, one row each.
        interpolation_steps: Decoded images along each interpolation, end points included.
    """

    n_samples: int = 64
    n_interpolations: int = 4
    interpolation_steps: int = 8

    def __post_init__(self) -> None:
        at_least("n_samples", self.n_samples, 1)
        at_least("n_interpolations", self.n_interpolations, 0)
        at_least("interpolation_steps", self.interpolation_steps, 2)


def interpolations(model: ManifoldModel, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
    """Decoded images (n, steps, D) along the straight latent line from project(x_a) to project(x_b)."""
    with torch.no_grad():
        u_a, u_b = model.project(x_a)[0], model.project(x_b)[0]
        t = torch.linspace(0, 1, steps, device=u_a.device)[None, :, None]
        u = (1 - t) * u_a[:, None] + t * u_b[:, None]
        return model.decode(u.reshape(-1, u.shape[-1])).reshape(len(x_a), steps, -1).cpu()


def plot_images(
    model: ManifoldModel,
    dataset: PixelData,
    records: list[dict],
    out_dir: Path,
    options: ImageEvaluation = ImageEvaluation(),
    figure: ImageFigures = ImageFigures(),
) -> list[Path]:
    """Draw the figures of a manifold model on image data into ``out_dir``; returns their paths.

    - ``training_curves.png``: every logged training quantity per epoch, one colour per phase;
    - ``samples.png``: a grid of ``n_samples`` (≤ 64) model samples;
    - ``reconstructions.png``: 8 test images (top row) and their projections g(u(x)) (bottom row);
    - ``interpolations.png``: ``n_interpolations`` rows: a test image, ``interpolation_steps`` decodings
      g((1 − t) u_a + t u_b) for t = 0…1, the other test image.
    """
    torch.manual_seed(options.seed)
    pixels = dataset.pixels
    paths = [training_curves(records, out_dir / "training_curves.png")]
    device = model_device(model)
    n = min(figure.n_samples, MAX_GRID_IMAGES)
    with torch.no_grad():
        samples = model.sample(n).cpu()
    paths.append(image_grid(pixels.to_images(samples), out_dir / "samples.png", "model samples", cols=min(8, n)))

    test = dataset.test_data()
    k = min(8, len(test))
    with torch.no_grad():
        recon = torch.cat([model.project(test[i : i + 1].to(device))[0] for i in range(k)])
        recon = model.decode(recon).cpu()
    both = torch.cat([pixels.to_images(test[:k]), pixels.to_images(recon)])
    paths.append(image_grid(both, out_dir / "reconstructions.png", "test images (top) and g(u(x)) (bottom)", cols=k))

    m = min(figure.n_interpolations, len(test) // 2)
    if m > 0:
        steps = figure.interpolation_steps
        x_a, x_b = test[:m].to(device), test[m : 2 * m].to(device)
        strips = interpolations(model, x_a, x_b, steps)
        rows = [torch.cat([x_a[i : i + 1].cpu().reshape(1, -1), strips[i], x_b[i : i + 1].cpu().reshape(1, -1)])
                for i in range(m)]
        paths.append(
            image_grid(pixels.to_images(torch.cat(rows)), out_dir / "interpolations.png",
                       "latent interpolations: test image, g((1−t)u_a + t u_b) for t = 0…1, test image",
                       cols=steps + 2)
        )
    return [p for p in paths if p is not None]
