"""Evaluation of flow-VAEs: test ELBO and importance-weighted log-likelihood, in nats and bits/dim.

For binarized images (Bernoulli) and 256-bin discretized-logistic likelihoods the model gives a probability
mass, so bits/dim = −log P / (D log 2). For continuous (dequantized, maybe logit-transformed) images it gives
a density in the model's space; the dataset's ``log_jacobian_to_pixels`` turns it into a density over pixel
values in [0, 256)^D, the space the flow literature quotes bits/dim in.
"""

from __future__ import annotations

import math

import torch

from ..datasets.base import Dataset


def batched_bounds(model, x: torch.Tensor, iw_samples: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ELBO (mean over the ``iw_samples`` draws) and IW bound from the same draws, (N,) each.

    ``batch_size`` counts decoder passes (examples × samples), so memory does not grow with k.
    """
    device = next(model.parameters()).device
    rows = max(1, batch_size // iw_samples)
    elbos, iws = [], []
    with torch.no_grad():
        for chunk in torch.split(x, rows):
            log_w = model.log_weights(chunk.to(device), iw_samples)["log_w"]
            elbos.append(log_w.mean(0).cpu())
            iws.append((torch.logsumexp(log_w, 0) - math.log(iw_samples)).cpu())
    return torch.cat(elbos), torch.cat(iws)


def evaluate_flow_vae(
    model,
    dataset: Dataset,
    iw_samples: int = 100,
    batch_size: int = 5000,
    max_examples: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Test ELBO (averaged over the k draws) and the k-sample importance-weighted bound (Burda et al. 2016)."""
    torch.manual_seed(seed)
    test = dataset.test_data()
    if max_examples is not None:
        test = test[:max_examples]
    elbo, iw = batched_bounds(model, test, max(iw_samples, 1), batch_size)
    dims = test[0].numel()
    metrics: dict[str, float] = {"n_test": len(test), "iw_samples": iw_samples, "data_dims": dims,
                                 "test_elbo": float(elbo.mean()), "test_iw_log_likelihood": float(iw.mean())}
    offset = torch.zeros(len(test))
    log_jac = getattr(dataset, "log_jacobian_to_pixels", None)
    if model.likelihood == "gaussian" and log_jac is not None:
        offset = log_jac(test).cpu()
    if model.likelihood != "gaussian" or log_jac is not None:
        metrics["test_elbo_bits_per_dim"] = float(-(elbo + offset).mean() / (dims * math.log(2)))
        metrics["test_iw_bits_per_dim"] = float(-(iw + offset).mean() / (dims * math.log(2)))
    with torch.no_grad():
        parts = model.log_weights(test[: min(len(test), 1000)].to(next(model.parameters()).device), 1)
    metrics["test_reconstruction_log_likelihood"] = float(parts["log_px_z"].mean())
    metrics["test_kl"] = float((parts["log_q0"] - parts["logdet"] - parts["log_pz"]).mean())
    metrics["test_flow_logdet"] = float(parts["logdet"].mean())
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
