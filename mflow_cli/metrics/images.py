"""Evaluation of manifold models on image manifolds: test log-likelihoods, reconstruction error, sample quality.

The catalog picks :func:`evaluate_images` (options :class:`ImageEvaluation`) for every manifold model (DNF,
M-flow, PAE, InfoMax VAE) on a :class:`~mflow_cli.datasets.base.PixelData` dataset, so they are scored alike.
Pixel-space quantities go through the dataset's :class:`~mflow_cli.datasets.pixels.PixelSpace`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..datasets.base import PixelData
from ..models.interfaces import ManifoldModel
from .common import at_least, finite_metrics
from .manifold import ambient_log_prob, manifold_log_prob

JACOBIAN_ROWS = 256  # on-manifold densities in chunks of this many decoder-Jacobian rows (chunk · d)


@dataclass(frozen=True)
class ImageEvaluation:
    r"""What :func:`evaluate_images` computes, and the settings :func:`~mflow_cli.plots.images.plot_images`
    shares with it.

    Arguments:
        batch_size: Images per batch of ambient densities and of model samples (memory only).
        n_test: Score the first ``n_test`` test images.
        n_samples: Model samples drawn for the sample-quality distances (0 skips them).
        n_reference: Training images the nearest-neighbour distances are measured to.
        seed: Seed of the random draws (samples, the DNF's inflation noise on test images).
    """

    batch_size: int = 100
    n_test: int = 1000
    n_samples: int = 500
    n_reference: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        at_least("n_test", self.n_test, 1)
        at_least("n_samples", self.n_samples, 0)
        at_least("n_reference", self.n_reference, 1)


def nearest_rms(a: torch.Tensor, ref: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """RMS per-pixel distance of each row of ``a`` to its nearest row of ``ref`` (both flat, [0, 1])."""
    out = [torch.cdist(part.double(), ref.double()).min(1).values for part in torch.split(a, chunk)]
    return torch.cat(out) / math.sqrt(a.shape[1])


def evaluate_images(
    model: ManifoldModel, dataset: PixelData, options: ImageEvaluation = ImageEvaluation()
) -> dict[str, float | int | None]:
    """Image metrics on the first ``n_test`` test images and ``n_samples`` model samples.

    ``dataset`` is :class:`~mflow_cli.datasets.base.PixelData`; "model space" is its preprocessed space,
    "pixels" its images in [0, 1] (``dataset.pixels.to_images``).

    - ``n_test``: the number of test images scored;
    - ``test_log_likelihood_manifold``: mean on-manifold log density at the projections g(u(x)) (M-flow
      eq. 3), in nats, in the model space;
    - ``reconstruction_error``: mean ‖x − g(u(x))‖² in the model space;
    - ``reconstruction_mse_pixels``: mean per-pixel squared error of the reconstructions in [0, 1];
    - ``manifold_density_points_per_s``: test images whose on-manifold density was evaluated per second;
    - models with ``has_ambient_density`` (DNF, PIE, plain flow), on test images with the model's
      inflation noise ``noise_std`` added: ``test_log_likelihood_ambient``, the mean log density in the
      model space, and ``test_bits_per_dim_ambient``, −(log p(y) + log|∂y/∂p|) / (D ln 2) over 8-bit pixel
      values p (``pixels.log_jacobian_to_pixels``);
    - with ``n_samples`` > 0: ``sample_to_train_rms`` and ``test_to_train_rms``, the mean RMS pixel distance
      of the model samples / of the test images to their nearest of the first ``n_reference`` training
      images (at their bin centres) (a sample far from every training image is off the data manifold), and
      ``sample_finite_fraction``, the fraction of samples without a non-finite value.

    Non-finite values are reported as None.
    """
    if not isinstance(dataset, PixelData):
        raise TypeError(f"evaluate_images needs an image dataset (PixelData), got {type(dataset).__name__}")
    torch.manual_seed(options.seed)
    pixels = dataset.pixels
    test = dataset.test_data()[: options.n_test]
    flat = test.reshape(len(test), -1)
    dim = flat.shape[1]
    start = time.perf_counter()
    log_p, proj = manifold_log_prob(model, flat, max(1, JACOBIAN_ROWS // model.latent_dim))
    seconds = time.perf_counter() - start
    unit = pixels.to_images(flat).reshape(len(flat), -1)
    metrics: dict[str, float | int | None] = {
        "n_test": len(flat),
        "test_log_likelihood_manifold": float(log_p.mean()),
        "reconstruction_error": float((flat - proj).pow(2).sum(1).mean()),
        "reconstruction_mse_pixels": float((unit - pixels.to_images(proj).reshape(len(flat), -1)).pow(2).mean()),
        "manifold_density_points_per_s": len(flat) / seconds,
    }
    if model.has_ambient_density:
        noisy = flat + model.noise_std * torch.randn_like(flat)
        ambient = ambient_log_prob(model, noisy, options.batch_size)
        pixel = ambient + pixels.log_jacobian_to_pixels(noisy)
        metrics["test_log_likelihood_ambient"] = float(ambient.mean())
        metrics["test_bits_per_dim_ambient"] = float(-pixel.mean() / (dim * math.log(2)))
    n_samples = options.n_samples
    if n_samples > 0:
        sizes = [min(options.batch_size, n_samples - i) for i in range(0, n_samples, options.batch_size)]
        with torch.no_grad():
            samples = torch.cat([model.sample(size).reshape(size, -1).cpu() for size in sizes])
        reference = pixels.to_model(dataset.levels("train")[: options.n_reference], dequantize=False)
        ref = pixels.to_images(reference).reshape(-1, dim)
        sample_unit = pixels.to_images(samples).reshape(n_samples, -1)
        metrics["sample_to_train_rms"] = float(nearest_rms(sample_unit, ref).mean())
        metrics["test_to_train_rms"] = float(nearest_rms(unit, ref).mean())
        metrics["sample_finite_fraction"] = float(torch.isfinite(samples).all(1).float().mean())
    return finite_metrics(metrics)
