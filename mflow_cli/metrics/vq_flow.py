"""Evaluation of VQ-Flows (and the classic flows they are compared with, one chart): likelihood, charts,
samples, FID (:func:`evaluate_vq_flow`, :class:`AtlasEvaluation`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..datasets.base import Dataset, DistanceToManifold, ExistingPath, Labelled, PixelData
from ..models.interfaces import AtlasModel
from .common import Metric, at_least, finite_metrics, model_device, sample_in_batches
from .fid import cached_feature_classifier, fid_score

METRICS: dict[str, Metric] = {
    "n_test": Metric("test points", "count", "n/a", "The number of test points evaluated."),
    "test_log_likelihood": Metric(
        "test log-likelihood", "nats per point", "higher",
        "Mean log p(x) of the test points, the atlas's density summed over the charts a point belongs to.",
    ),
    "test_log_likelihood_points_per_s": Metric(
        "test log-likelihood throughput", "points/s", "higher",
        "Test points scored per second (machine-dependent).", timing=True,
    ),
    "num_charts": Metric("charts in the atlas", "count", "n/a", "The number of charts K (a model setting)."),
    "atlas_mass": Metric(
        "total probability mass of the atlas", "fraction", "closer to 1",
        "Monte-Carlo estimate (mass_samples draws) of the atlas's total mass: 1 when the charts' densities "
        "neither overlap (> 1) nor leak outside their charts (< 1).",
    ),
    "test_bits_per_dim": Metric(
        "test negative log-likelihood in bits per dimension", "bits/dim", "lower",
        "−(log p(y) + log|∂y/∂p|) / (D ln 2) over the 8-bit pixel values p of the test images (image data).",
    ),
    "median_test_bits_per_dim": Metric(
        "median over the test images of their bits per dimension", "bits/dim", "lower",
        "The median of the per-image −(log p(y) + log|∂y/∂p|) / (D ln 2) (image data): the typical image, "
        "where test_bits_per_dim is the mean over all of them.",
    ),
    "worst_test_bits_per_dim": Metric(
        "the worst test image's bits per dimension", "bits/dim", "lower",
        "The largest per-image −(log p(y) + log|∂y/∂p|) / (D ln 2) over the test images (image data): how "
        "little mass the model gives the test image it explains worst.",
    ),
    "mean_charts_per_point": Metric(
        "mean number of charts per test point", "count", "n/a",
        "The mean number of charts a test point belongs to (K > 1; 1 when the charts do not overlap).",
    ),
    "charts_used": Metric(
        "charts holding a test point", "count", "n/a", "How many of the K charts hold at least one test point.",
    ),
    "mean_sample_distance_to_support": Metric(
        "mean distance of model samples to the true support", "distance", "lower",
        "Mean Euclidean distance of n_samples model samples to the dataset's true support (compare with "
        "mean_test_distance_to_support, the data's own noise).",
    ),
    "mean_test_distance_to_support": Metric(
        "mean distance of test points to the true support", "distance", "n/a",
        "Mean Euclidean distance of the test points to the true support: the data's noise level, the floor "
        "for mean_sample_distance_to_support.",
    ),
    "frechet_feature_distance": Metric(
        "Fréchet distance of sample and test features (FID-style)", "squared distance", "lower",
        "‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between features of fid_samples model samples and of the test "
        "data, from fid_feature_net or a small classifier trained on the training data (not Inception: not "
        "comparable with published FIDs).",
    ),
}
"""Every key :func:`evaluate_vq_flow` can return: what it is, its unit and which direction is better."""

RENAMED_METRICS: dict[str, str] = {"fid": "frechet_feature_distance"}
"""Keys of earlier evaluation.json files -> today's."""


@dataclass(frozen=True)
class AtlasEvaluation:
    r"""What :func:`evaluate_vq_flow` computes, and the settings :func:`~mflow_cli.plots.vq_flow.plot_vq_flow`
    shares with it.

    Arguments:
        batch_size: Points per batch of densities, chart memberships and samples (memory only).
        n_samples: Model samples drawn for their mean distance to the true support (datasets that know
            it; 0 skips it).
        mass_samples: Monte-Carlo samples of the atlas's total mass.
        fid: Compute the Fréchet distance between features of model samples and of the test data.
        fid_samples: Model samples for the Fréchet distance.
        fid_feature_net: A TorchScript feature network (N, ...) -> (N, F) to use; by default a small
            classifier trained once on the training data and cached.
        fid_cache_dir: Where the default feature classifier is cached.
        seed: Seed of the random draws (mass samples, model samples).
    """

    batch_size: int = 1000
    n_samples: int = 2000
    mass_samples: int = 10000
    fid: bool = False
    fid_samples: int = 1000
    fid_feature_net: ExistingPath | None = None
    fid_cache_dir: str = "runs/.fid_cache"
    seed: int = 0

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        at_least("n_samples", self.n_samples, 0)
        at_least("mass_samples", self.mass_samples, 1)
        at_least("fid_samples", self.fid_samples, 2)


def batched_log_prob(model: AtlasModel, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """log p(x) (N,) in batches."""
    device = model_device(model)
    with torch.no_grad():
        return torch.cat([model.log_prob(c.to(device)).cpu() for c in torch.split(x, batch_size)])


def feature_inputs(dataset: Dataset, x: torch.Tensor) -> torch.Tensor:
    """What the FID feature network sees: images in [0, 1] for :class:`PixelData` datasets, else the values."""
    return dataset.pixels.to_images(x) if isinstance(dataset, PixelData) else x


def feature_network(dataset: Dataset, feature_net: str | None, cache_dir: str, seed: int = 0):
    """The user's TorchScript feature network, else the cached small classifier for this dataset.

    The classifier's training images are drawn through the dataset's batch transform, and a classifier not yet
    cached is trained, under ``seed`` (the global RNG left as it was), so every model scored on a dataset gets the
    same network and cache entry.
    """
    if feature_net is not None:
        return torch.jit.load(feature_net, map_location="cpu").eval()
    labels = dataset.labels("train") if isinstance(dataset, Labelled) else None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        images = feature_inputs(dataset, dataset.batch_transform(dataset.train_data()))
        return cached_feature_classifier(images, labels, cache_dir)


def evaluate_vq_flow(
    model: AtlasModel, dataset: Dataset, options: AtlasEvaluation = AtlasEvaluation()
) -> dict[str, float | int | None]:
    """Held-out likelihood, chart statistics, the atlas's mass, sample distances and the Fréchet distance:
    every key it can return is described in :data:`METRICS` (name, unit, direction, meaning).

    Always ``n_test``, ``test_log_likelihood``, ``test_log_likelihood_points_per_s``, ``num_charts`` and
    ``atlas_mass`` (``mass_samples`` Monte-Carlo samples); ``test_bits_per_dim`` (mean), its median and the
    worst image's for :class:`~mflow_cli.datasets.base.PixelData`; ``mean_charts_per_point`` and ``charts_used``
    when K > 1;
    ``mean_sample_distance_to_support`` and ``mean_test_distance_to_support`` for
    :class:`~mflow_cli.datasets.base.DistanceToManifold` datasets with ``n_samples`` > 0;
    ``frechet_feature_distance`` with ``fid`` (``fid_samples`` model samples, :mod:`mflow_cli.metrics.fid`).

    Non-finite values are reported as None.
    """
    torch.manual_seed(options.seed)
    batch_size = options.batch_size
    test = dataset.test_data()
    start = time.perf_counter()
    log_p = batched_log_prob(model, test, batch_size)
    metrics: dict[str, float | int | None] = {
        "n_test": len(test),
        "test_log_likelihood": float(log_p.mean()),
        "test_log_likelihood_points_per_s": len(test) / (time.perf_counter() - start),
        "num_charts": model.num_charts,
        "atlas_mass": model.chart_mass(options.mass_samples),
    }
    if isinstance(dataset, PixelData):
        dims = test[0].numel()
        log_jacobian = dataset.pixels.log_jacobian_to_pixels(test)
        per_image = -(log_p + log_jacobian) / (dims * math.log(2))
        metrics["test_bits_per_dim"] = float(per_image.mean())
        metrics["median_test_bits_per_dim"] = float(per_image.median())
        metrics["worst_test_bits_per_dim"] = float(per_image.max())
    if model.num_charts > 1:
        with torch.no_grad():
            members = torch.cat([model.membership(c.reshape(len(c), -1)) for c in torch.split(test, batch_size)])
        metrics["mean_charts_per_point"] = float(members.float().sum(1).mean())
        metrics["charts_used"] = int(members.any(0).sum())
    if isinstance(dataset, DistanceToManifold) and options.n_samples > 0:
        samples = sample_in_batches(model, options.n_samples, batch_size)
        metrics["mean_sample_distance_to_support"] = float(dataset.distance_to_manifold(samples).mean())
        metrics["mean_test_distance_to_support"] = float(dataset.distance_to_manifold(test).mean())
    if options.fid:
        net = feature_network(dataset, options.fid_feature_net, options.fid_cache_dir, options.seed)
        samples = feature_inputs(dataset, sample_in_batches(model, options.fid_samples, batch_size))
        metrics["frechet_feature_distance"] = fid_score(net, samples, feature_inputs(dataset, test))
    return finite_metrics(metrics)
