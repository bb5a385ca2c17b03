"""Evaluation on image manifolds: test log-likelihoods, reconstruction error, sample quality.

Called by the ``manifold`` evaluator when the dataset is an :class:`~mflow_cli.datasets.images.ImageManifold`,
for every model of that family (DNF, M-flow, PAE, InfoMax VAE), so they are scored alike:

- ``test_log_likelihood_manifold``: mean on-manifold log density at the projections (M-flow eq. 3), in nats,
  in the preprocessed space; the DNF/PIE ambient density as well (``..._ambient`` and bits/dim of the
  8-bit images, −(log p(y) + log|∂y/∂x|) / (D ln 2));
- ``reconstruction_error``: mean ‖x − g(u(x))‖² in the preprocessed space, and the per-pixel MSE in [0, 1];
- ``sample_to_train_rms`` vs ``test_to_train_rms``: RMS pixel distance of model samples / of test images to
  their nearest training image (a sample far from every training image is off the data manifold).
"""

from __future__ import annotations

import math
import time

import torch

from ..datasets.images import ImageManifold


def _device(model) -> torch.device:
    return next(model.parameters()).device


def manifold_log_prob_images(model, x: torch.Tensor, rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """On-manifold log p and projections of flat ``x``, in chunks of ``rows`` Jacobian rows (chunk·d)."""
    chunk = max(1, rows // model.latent_dim)
    logs, projs = [], []
    with torch.no_grad():
        for part in torch.split(x, chunk):
            log_p, proj, _ = model.log_prob_manifold(part.to(_device(model)))
            logs.append(log_p.cpu())
            projs.append(proj.reshape(len(part), -1).cpu())
    return torch.cat(logs), torch.cat(projs)


def nearest_rms(a: torch.Tensor, ref: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """RMS per-pixel distance of each row of ``a`` to its nearest row of ``ref`` (both flat, [0, 1])."""
    out = [torch.cdist(part.double(), ref.double()).min(1).values for part in torch.split(a, chunk)]
    return torch.cat(out) / math.sqrt(a.shape[1])


def evaluate_images(
    model,
    dataset: ImageManifold,
    batch_size: int = 100,
    n_test: int = 1000,
    n_samples: int = 500,
    n_reference: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Image metrics on the first ``n_test`` test images and ``n_samples`` samples (see module doc)."""
    torch.manual_seed(seed)
    test = dataset.test_data()[:n_test]
    flat = test.reshape(len(test), -1)
    dim = flat.shape[1]
    start = time.perf_counter()
    log_p, proj = manifold_log_prob_images(model, flat)
    seconds = time.perf_counter() - start
    unit = dataset.to_unit(flat).reshape(len(flat), -1)
    metrics: dict[str, float] = {
        "n_test": len(flat),
        "test_log_likelihood_manifold": float(log_p.mean()),
        "reconstruction_error": float((flat - proj).pow(2).sum(1).mean()),
        "reconstruction_mse_pixels": float((unit - dataset.to_unit(proj).reshape(len(flat), -1)).pow(2).mean()),
        "manifold_density_points_per_s": len(flat) / seconds,
    }
    if getattr(model, "has_ambient_density", False):  # DNF, PIE, plain flow
        noisy = flat + getattr(model, "noise_std", 0.0) * torch.randn_like(flat)
        with torch.no_grad():
            parts = torch.split(noisy, batch_size)
            ambient = torch.cat([model.log_prob_ambient(c.to(_device(model))).cpu() for c in parts])
        pixel = ambient + dataset.log_det_preprocess(noisy)
        metrics["test_log_likelihood_ambient"] = float(ambient.mean())
        metrics["test_bits_per_dim_ambient"] = float(-pixel.mean() / (dim * math.log(2)))
    if n_samples > 0:
        sizes = [min(batch_size, n_samples - i) for i in range(0, n_samples, batch_size)]
        with torch.no_grad():
            samples = torch.cat([model.sample(size).reshape(size, -1).cpu() for size in sizes])
        ref = dataset.to_unit(dataset.train_data()[:n_reference]).reshape(-1, dim)
        sample_unit = dataset.to_unit(samples).reshape(n_samples, -1)
        metrics["sample_to_train_rms"] = float(nearest_rms(sample_unit, ref).mean())
        metrics["test_to_train_rms"] = float(nearest_rms(unit, ref).mean())
        metrics["sample_finite_fraction"] = float(torch.isfinite(samples).all(1).float().mean())
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
