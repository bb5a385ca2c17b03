"""Evaluation of VQ-Flows (and the classic flows they are compared with): likelihood, charts, samples, FID."""

from __future__ import annotations

import math
import time

import torch

from ..datasets.base import Dataset, ExistingPath
from .fid import cached_feature_classifier, fid_score


def batched_log_prob(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """log p(x) (N,) in batches."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model.log_prob(c.to(device)).cpu() for c in torch.split(x, batch_size)])


def to_images(dataset: Dataset, x: torch.Tensor) -> torch.Tensor:
    """Model-space values as displayable images in [0, 1] where the dataset knows how; else unchanged."""
    convert = getattr(dataset, "to_images", None)
    return convert(x) if convert is not None else x


def feature_network(dataset: Dataset, feature_net: str | None, cache_dir: str):
    """The user's TorchScript feature network, else the cached small classifier for this dataset."""
    if feature_net is not None:
        return torch.jit.load(feature_net, map_location="cpu").eval()
    images = to_images(dataset, dataset.batch_transform(dataset.train_data()))
    labels_fn = getattr(dataset, "labels", None)
    labels = labels_fn("train") if labels_fn is not None else None
    return cached_feature_classifier(images, labels, cache_dir)


def sample_in_batches(model, n: int, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.sample(min(batch_size, n - s)).cpu() for s in range(0, n, batch_size)])


def evaluate_vq_flow(
    model,
    dataset: Dataset,
    batch_size: int = 1000,
    n_samples: int = 2000,
    mass_samples: int = 10000,
    fid: bool = False,
    fid_samples: int = 1000,
    fid_feature_net: ExistingPath | None = None,
    fid_cache_dir: str = "runs/.fid_cache",
    seed: int = 0,
) -> dict[str, float]:
    """Held-out log-likelihood (and bits/dim for images), chart statistics, the atlas's total mass,
    mean distance of samples to the true support (datasets that know it) and the Fréchet distance."""
    torch.manual_seed(seed)
    test = dataset.test_data()
    start = time.perf_counter()
    log_p = batched_log_prob(model, test, batch_size)
    metrics: dict[str, float] = {
        "n_test": len(test),
        "test_log_likelihood": float(log_p.mean()),
        "test_log_likelihood_points_per_s": len(test) / (time.perf_counter() - start),
        "num_charts": model.num_charts,
        "atlas_mass": model.chart_mass(mass_samples),
    }
    log_jac = getattr(dataset, "log_jacobian_to_pixels", None)
    if log_jac is not None:
        dims = test[0].numel()
        metrics["test_bits_per_dim"] = float(-(log_p + log_jac(test)).mean() / (dims * math.log(2)))
    if model.num_charts > 1:
        with torch.no_grad():
            members = torch.cat([model.membership(c.reshape(len(c), -1)) for c in torch.split(test, batch_size)])
        metrics["mean_charts_per_point"] = float(members.float().sum(1).mean())
        metrics["charts_used"] = int(members.any(0).sum())
    distance = getattr(dataset, "distance_to_support", None)
    if distance is not None and n_samples > 0:
        samples = sample_in_batches(model, n_samples, batch_size)
        metrics["mean_sample_distance_to_support"] = float(distance(samples).mean())
        metrics["mean_test_distance_to_support"] = float(distance(test).mean())
    if fid:
        net = feature_network(dataset, fid_feature_net, fid_cache_dir)
        samples = to_images(dataset, sample_in_batches(model, fid_samples, batch_size))
        metrics["fid"] = fid_score(net, samples, to_images(dataset, test))
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
