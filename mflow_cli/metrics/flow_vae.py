"""Evaluation of flow-VAEs: test ELBO and importance-weighted log-likelihood, in nats and bits/dim.

For binarized images (Bernoulli) and 256-bin discretized-logistic likelihoods the model gives a probability
mass, so bits/dim = −log P / (D log 2). For continuous (dequantized, maybe logit-transformed) images it gives
a density in the model's space; the dataset's ``pixels.log_jacobian_to_pixels`` turns it into a density over pixel
values in [0, 256)^D, the space the flow literature quotes bits/dim in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..datasets.base import Dataset, PixelData
from ..models.interfaces import VariationalModel
from .common import at_least, finite_metrics, model_device


@dataclass(frozen=True)
class VariationalEvaluation:
    r"""What :func:`evaluate_flow_vae` computes, and the settings :func:`~mflow_cli.plots.flow_vae.plot_flow_vae`
    shares with it.

    Arguments:
        iw_samples: Posterior draws k per test example for the ELBO and the importance-weighted bound.
        batch_size: Decoder passes (examples × draws) per batch (memory; the draws are random either way).
        max_examples: Score only the first ``max_examples`` test examples (all by default).
        seed: Seed of the posterior draws (and of the figures' samples).
    """

    iw_samples: int = 100
    batch_size: int = 5000
    max_examples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        at_least("iw_samples", self.iw_samples, 1)
        at_least("batch_size", self.batch_size, 1)
        if self.max_examples is not None:
            at_least("max_examples", self.max_examples, 1)


def batched_bounds(
    model: VariationalModel, x: torch.Tensor, iw_samples: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ELBO (mean over the ``iw_samples`` draws) and IW bound from the same draws, (N,) each.

    ``batch_size`` counts decoder passes (examples × samples), so memory does not grow with k.
    """
    device = model_device(model)
    rows = max(1, batch_size // iw_samples)
    elbos, iws = [], []
    with torch.no_grad():
        for chunk in torch.split(x, rows):
            log_w = model.log_weights(chunk.to(device), iw_samples)["log_w"]
            elbos.append(log_w.mean(0).cpu())
            iws.append((torch.logsumexp(log_w, 0) - math.log(iw_samples)).cpu())
    return torch.cat(elbos), torch.cat(iws)


def evaluate_flow_vae(
    model: VariationalModel, dataset: Dataset, options: VariationalEvaluation = VariationalEvaluation()
) -> dict[str, float | int | None]:
    """Test ELBO (averaged over the k draws) and the k-sample importance-weighted bound (Burda et al. 2016).

    - ``n_test``: the number of test examples scored; ``iw_samples``: k; ``data_dims``: D;
    - ``test_elbo``: mean ELBO, log p(x|z) + log p(z) − log q(z|x) averaged over k posterior draws, in nats;
    - ``test_iw_log_likelihood``: mean k-sample bound log (1/k) Σ_i p(x, z_i)/q(z_i|x) (≥ the ELBO), in nats;
    - ``test_elbo_bits_per_dim``, ``test_iw_bits_per_dim``: the same as −bound / (D ln 2): a probability
      mass for Bernoulli and discretized-logistic decoders; for Gaussian decoders a density, converted to
      pixel values in [0, 256)^D with ``pixels.log_jacobian_to_pixels`` (only on
      :class:`~mflow_cli.datasets.base.PixelData`; absent otherwise);
    - from one posterior draw on the first 1000 test examples: ``test_reconstruction_log_likelihood``, the
      mean log p(x|z_K); ``test_kl``, the mean log q₀(z₀|x) − log|det ∂z_K/∂z₀| − log p(z_K) (the KL term's
      estimate); ``test_flow_logdet``, the mean log-determinant of the posterior flow.

    Non-finite values are reported as None.
    """
    torch.manual_seed(options.seed)
    test = dataset.test_data()
    if options.max_examples is not None:
        test = test[: options.max_examples]
    iw_samples = options.iw_samples
    elbo, iw = batched_bounds(model, test, iw_samples, options.batch_size)
    dims = test[0].numel()
    metrics: dict[str, float | int | None] = {
        "n_test": len(test), "iw_samples": iw_samples, "data_dims": dims,
        "test_elbo": float(elbo.mean()), "test_iw_log_likelihood": float(iw.mean()),
    }
    offset = torch.zeros(len(test))
    if model.likelihood == "gaussian" and isinstance(dataset, PixelData):
        offset = dataset.pixels.log_jacobian_to_pixels(test).cpu()
    if model.likelihood != "gaussian" or isinstance(dataset, PixelData):
        metrics["test_elbo_bits_per_dim"] = float(-(elbo + offset).mean() / (dims * math.log(2)))
        metrics["test_iw_bits_per_dim"] = float(-(iw + offset).mean() / (dims * math.log(2)))
    with torch.no_grad():
        parts = model.log_weights(test[: min(len(test), 1000)].to(model_device(model)), 1)
    metrics["test_reconstruction_log_likelihood"] = float(parts["log_px_z"].mean())
    metrics["test_kl"] = float((parts["log_q0"] - parts["logdet"] - parts["log_pz"]).mean())
    metrics["test_flow_logdet"] = float(parts["logdet"].mean())
    return finite_metrics(metrics)
