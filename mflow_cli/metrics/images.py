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

from ..datasets.base import ExistingPath, PixelData
from ..datasets.images import ImageManifold
from ..datasets.pixels import N_LEVELS
from ..datasets.procedural import split_parameters
from ..errors import ConfigError
from ..models.interfaces import ManifoldModel
from .common import Metric, at_least, finite_metrics, model_device, sample_in_batches
from .fid import fid_score
from .manifold import ambient_log_prob, manifold_log_prob
from .renderer_distance import Renderer, distance_summary, project_onto_renderer
from .vq_flow import feature_network

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
        projection_starts: Gradient-descent starts per image when projecting test images, reconstructions
            and samples onto the procedural renderer (the distance to the true manifold); 0 skips it.
        projection_steps: Adam steps of each projection start.
        knn_neighbours: The k of the k-nearest-neighbour regression of the true parameters on the learned
            manifold coordinates (latent recovery R²).
        fid: Compute the Fréchet distance between features of the ``n_samples`` model samples and of the
            ``n_test`` test images.
        fid_feature_net: A TorchScript feature network (N, 3, R, R) in [0, 1] -> (N, F) to use (an
            Inception-v3 file, say); by default a small classifier trained once on the training images and cached.
        fid_cache_dir: Where the default feature classifier is cached.
    """

    batch_size: int = 100
    n_test: int = 1000
    n_samples: int = 500
    n_reference: int = 2000
    seed: int = 0
    projection_starts: int = 4
    projection_steps: int = 150
    knn_neighbours: int = 10
    fid: bool = False
    fid_feature_net: ExistingPath | None = None
    fid_cache_dir: str = "runs/.fid_cache"

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        at_least("n_test", self.n_test, 1)
        at_least("n_samples", self.n_samples, 0)
        at_least("n_reference", self.n_reference, 1)
        at_least("projection_starts", self.projection_starts, 0)
        at_least("projection_steps", self.projection_steps, 0)
        at_least("knn_neighbours", self.knn_neighbours, 1)


def renderer_of(dataset: PixelData) -> Renderer | None:
    """The true manifold's renderer of a procedural :class:`~mflow_cli.datasets.images.ImageManifold`, else None."""
    if isinstance(dataset, ImageManifold) and dataset.source == "procedural":
        return Renderer(dataset.n_params, dataset.resolution)
    return None


def nearest_rms(a: torch.Tensor, ref: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """RMS per-pixel distance of each row of ``a`` to its nearest row of ``ref`` (both flat, [0, 1])."""
    out = [torch.cdist(part.double(), ref.double()).min(1).values for part in torch.split(a, chunk)]
    return torch.cat(out) / math.sqrt(a.shape[1])


def true_parameters(dataset: ImageManifold, n: int) -> torch.Tensor:
    """The true z (n, n_params) of the first ``n`` test images of a procedural :class:`ImageManifold`."""
    return split_parameters("test", dataset.n_test, dataset.n_params, dataset.seed)[:n]


def _r2(truth: torch.Tensor, predicted: torch.Tensor) -> tuple[float, float]:
    """Σ squared errors and Σ squared deviations from the mean over every parameter (for a pooled R²)."""
    return float((truth - predicted).pow(2).sum()), float((truth - truth.mean(0)).pow(2).sum())


def latent_recovery_r2(u: torch.Tensor, z: torch.Tensor, neighbours: int = 10) -> tuple[float, float]:
    r"""How much of the true parameters' variance a regression z ~ u explains: (linear R², k-NN R²).

    Two-fold cross-validated (fit on one half of the rows, scored on the other, and the reverse), pooled over
    parameters: R² = 1 − Σ (z − ẑ)² / Σ (z − z̄)² with z̄ the scored half's mean. Linear: least squares with an
    intercept. k-NN: the mean z of the ``neighbours`` nearest rows of u, coordinates standardised on the fitted
    half. 1 means the parameters are a (linear) function of u; 0 or below, that u tells nothing about them.
    """
    u, z = u.double(), z.double()
    half = len(u) // 2
    if half < 2:
        raise ConfigError(f"latent recovery needs at least 4 points, got {len(u)}")
    folds = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]
    sums = {"linear": [0.0, 0.0], "knn": [0.0, 0.0]}
    for fit, score in folds:
        design = torch.cat([u[fit], torch.ones(len(u[fit]), 1, dtype=u.dtype)], 1)
        coef = torch.linalg.lstsq(design, z[fit], driver="gelsd").solution
        linear = torch.cat([u[score], torch.ones(len(u[score]), 1, dtype=u.dtype)], 1) @ coef
        mean, std = u[fit].mean(0), u[fit].std(0).clamp(min=1e-12)
        k = min(neighbours, len(u[fit]))
        nearest = torch.cdist((u[score] - mean) / std, (u[fit] - mean) / std).topk(k, largest=False).indices
        knn = z[fit][nearest].mean(1)
        for name, predicted in (("linear", linear), ("knn", knn)):
            sse, sst = _r2(z[score], predicted)
            sums[name][0] += sse
            sums[name][1] += sst
    return tuple(1 - sse / sst for sse, sst in sums.values())  # type: ignore[return-value]


def manifold_coordinates(model: ManifoldModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model.project(x)[0]`` (N, d) of flat x, in batches."""
    device = model_device(model)
    with torch.no_grad():
        return torch.cat([model.project(c.to(device))[0].cpu() for c in torch.split(x, batch_size)])


def evaluate_images(
    model: ManifoldModel, dataset: PixelData, options: ImageEvaluation = ImageEvaluation()
) -> dict[str, float | int | None]:
    """Image metrics on the first ``n_test`` test images and ``n_samples`` model samples.

    ``dataset`` is :class:`~mflow_cli.datasets.base.PixelData`; "model space" is its preprocessed space,
    "pixels" its images in [0, 1] (``dataset.pixels.to_images``), "pixel levels" the values p ∈ [0, 256) of
    ``dataset.pixels.to_pixels`` (one unit = one 8-bit level). Every key is described in :data:`METRICS`.

    - ``n_test``: the number of test images scored;
    - ``test_log_likelihood_manifold``: mean on-manifold log density at the projections g(u(x)) (M-flow
      eq. 3), in nats, in the model space (for a plain ambient flow, d = D, its density in R^D);
    - ``reconstruction_mean_squared_distance``: mean ‖x − g(u(x))‖² in the model space;
    - ``reconstruction_mse_pixels``: mean per-pixel squared error of the reconstructions in [0, 1];
    - ``reconstruction_l2_pixels``: mean per-image ‖x − g(u(x))‖₂ in pixel levels (the M-flow/DNF code's
      reconstruction error, its images in 0–255);
    - ``manifold_density_points_per_s``: test images whose on-manifold density was evaluated per second;
    - models with ``has_ambient_density`` (DNF, PIE, plain flow), on test images with the model's
      inflation noise ``noise_std`` added: ``test_log_likelihood_ambient``, the mean log density in the
      model space, and ``test_bits_per_dim_ambient``, −(log p(y) + log|∂y/∂p|) / (D ln 2) over 8-bit pixel
      values p (``pixels.log_jacobian_to_pixels``);
    - with ``n_samples`` > 0: ``sample_to_train_rms`` and ``test_to_train_rms``, the mean RMS pixel distance
      of the model samples / of the test images to their nearest of the first ``n_reference`` training
      images (at their bin centres) (a sample far from every training image is off the data manifold), and
      ``sample_finite_fraction``, the fraction of samples without a non-finite value; with ``fid`` also
      ``fid``, the Fréchet distance between features of the samples and of the test images
      (:mod:`mflow_cli.metrics.fid`; the cached small classifier unless ``fid_feature_net`` is given);
    - procedural datasets (the true manifold is the renderer, :mod:`mflow_cli.metrics.renderer_distance`) with
      ``projection_starts`` > 0: ``{test,reconstruction,sample}_distance_to_manifold_{mean,median,q10,q90}``,
      the distance ‖x − 256·render(z*)‖₂ in pixel levels of the test images (the quantization floor), their
      reconstructions and the model samples (both clipped to the pixel range [0, 256]) to the true manifold;
      and for models with d < D
      ``latent_r2_linear`` / ``latent_r2_knn``, the cross-validated R² of a linear / k-NN regression of the
      test images' true parameters on their manifold coordinates u = ``model.project(x)[0]``
      (:func:`latent_recovery_r2`).

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
    test_levels, proj_levels = pixels.to_pixels(flat), pixels.to_pixels(proj)
    metrics: dict[str, float | int | None] = {
        "n_test": len(flat),
        "test_log_likelihood_manifold": float(log_p.mean()),
        "reconstruction_mean_squared_distance": float((flat - proj).pow(2).sum(1).mean()),
        "reconstruction_mse_pixels": float((unit - pixels.to_images(proj).reshape(len(flat), -1)).pow(2).mean()),
        "reconstruction_l2_pixels": float((test_levels - proj_levels).double().norm(dim=1).mean()),
        "manifold_density_points_per_s": len(flat) / seconds,
    }
    if model.has_ambient_density:
        noisy = flat + model.noise_std * torch.randn_like(flat)
        ambient = ambient_log_prob(model, noisy, options.batch_size)
        pixel = ambient + pixels.log_jacobian_to_pixels(noisy)
        metrics["test_log_likelihood_ambient"] = float(ambient.mean())
        metrics["test_bits_per_dim_ambient"] = float(-pixel.mean() / (dim * math.log(2)))
    n_samples = options.n_samples
    samples = None
    if n_samples > 0:
        samples = sample_in_batches(model, n_samples, options.batch_size).reshape(n_samples, -1)
        reference = pixels.to_model(dataset.levels("train")[: options.n_reference], dequantize=False)
        ref = pixels.to_images(reference).reshape(-1, dim)
        sample_unit = pixels.to_images(samples).reshape(n_samples, -1)
        metrics["sample_to_train_rms"] = float(nearest_rms(sample_unit, ref).mean())
        metrics["test_to_train_rms"] = float(nearest_rms(unit, ref).mean())
        metrics["sample_finite_fraction"] = float(torch.isfinite(samples).all(1).float().mean())
    renderer = renderer_of(dataset)
    if renderer is not None and options.projection_starts > 0:
        gen = torch.Generator().manual_seed(options.seed)
        parts = [("test", test_levels), ("reconstruction", proj_levels.clamp(0, N_LEVELS))]
        if samples is not None:  # clipped to the pixel range, as an image file would hold them
            parts.append(("sample", pixels.to_pixels(samples).clamp(0, N_LEVELS)))
        for name, images in parts:
            found = project_onto_renderer(images, renderer, options.projection_starts, options.projection_steps, gen)
            metrics.update(distance_summary(f"{name}_distance_to_manifold", found.distance))
        if model.latent_dim < model.data_dim:
            u = manifold_coordinates(model, flat, options.batch_size)
            linear, knn = latent_recovery_r2(u, true_parameters(dataset, len(flat)), options.knn_neighbours)
            metrics["latent_r2_linear"], metrics["latent_r2_knn"] = linear, knn
    if samples is not None and options.fid:
        net = feature_network(dataset, options.fid_feature_net, options.fid_cache_dir, options.seed)
        metrics["frechet_feature_distance"] = fid_score(net, pixels.to_images(samples), pixels.to_images(flat))
    return finite_metrics(metrics)


def _distance_metrics() -> dict[str, Metric]:
    what = {
        "test": "the quantized test images (the floor: 8-bit quantization alone gives about √(D/12))",
        "reconstruction": "the reconstructions g(u(x)) of the test images",
        "sample": "the model samples",
    }
    stats = {"mean": "mean", "median": "median", "q10": "10 % quantile", "q90": "90 % quantile"}
    return {
        f"{part}_distance_to_manifold_{stat}": Metric(
            f"{label} distance of {part} images to the true manifold", "pixel levels (L2)", "lower",
            f"The {label} over {doc} of min_z ‖x − 256·render(z)‖₂, in 8-bit levels (procedural data only).",
        )
        for part, doc in what.items()
        for stat, label in stats.items()
    }


METRICS: dict[str, Metric] = {
    "n_test": Metric("test images", "count", "n/a", "The number of test images scored."),
    "test_log_likelihood_manifold": Metric(
        "test log-likelihood on the manifold", "nats per point", "higher",
        "Mean log density on the learned manifold at the projections g(u(x)) of the test images (M-flow eq. 3), "
        "in the model space; for a plain ambient flow (d = D) its density in R^D.",
    ),
    "reconstruction_mean_squared_distance": Metric(
        "reconstruction error", "squared distance", "lower", "Mean ‖x − g(u(x))‖² over the test images, model space.",
    ),
    "reconstruction_mse_pixels": Metric(
        "reconstruction MSE per pixel", "squared [0, 1] pixel units", "lower",
        "Mean per-pixel squared error of the reconstructions, images in [0, 1].",
    ),
    "reconstruction_l2_pixels": Metric(
        "reconstruction error (L2, 0–255)", "pixel levels (L2)", "lower",
        "Mean per-image ‖x − g(u(x))‖₂ with images in 0–255 levels: the M-flow/DNF code's reconstruction error.",
    ),
    "manifold_density_points_per_s": Metric(
        "on-manifold density throughput", "points/s", "higher",
        "Test images whose on-manifold density was evaluated per second.", timing=True,
    ),
    "test_log_likelihood_ambient": Metric(
        "test log-likelihood in R^D", "nats per point", "higher",
        "Mean log density in the model space of the test images with the model's inflation noise added.",
    ),
    "test_bits_per_dim_ambient": Metric(
        "test bits/dim (ambient)", "bits/dim", "lower",
        "−(log p(y) + log|∂y/∂p|) / (D ln 2) over 8-bit pixel values of the (inflated) test images.",
    ),
    "sample_to_train_rms": Metric(
        "sample to nearest training image", "RMS [0, 1] pixel units", "lower",
        "Mean RMS per-pixel distance of the samples to their nearest of the first n_reference training images.",
    ),
    "test_to_train_rms": Metric(
        "test to nearest training image", "RMS [0, 1] pixel units", "n/a",
        "The same for the test images: the reference level for sample_to_train_rms.",
    ),
    "sample_finite_fraction": Metric(
        "finite samples", "", "higher", "The fraction of model samples without a non-finite value.",
    ),
    "frechet_feature_distance": Metric(
        "Fréchet distance (FID-style)", "squared distance", "lower",
        "Fréchet distance between features of the samples and of the test images (the cached small classifier "
        "or the given feature network; not comparable with published Inception FIDs).",
    ),
    "latent_r2_linear": Metric(
        "latent recovery R² (linear)", "", "higher",
        "Two-fold cross-validated R² of a linear regression of the test images' true parameters on u.",
    ),
    "latent_r2_knn": Metric(
        "latent recovery R² (k-NN)", "", "higher",
        "Two-fold cross-validated R² of a k-nearest-neighbour regression of the true parameters on u.",
    ),
    **_distance_metrics(),
}
"""What every key :func:`evaluate_images` can return means."""


RENAMED_METRICS: dict[str, str] = {"reconstruction_error": "reconstruction_mean_squared_distance",
                                   "fid": "frechet_feature_distance"}
"""Keys of earlier versions -> today's (to read old evaluation.json files)."""
