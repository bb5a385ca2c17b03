"""Evaluation of flow-VAEs: test ELBO, KL term and importance-weighted log-likelihood, in nats and bits/dim.

The reference protocol of the flow-posterior literature (Rezende & Mohamed 2015; Kingma et al. 2016; van den
Berg et al. 2018) scores all 10,000 MNIST test images with the k-sample importance-weighted bound of Burda et
al. (2016), k = 200 or 5,000, and quotes −log p(x) in nats with the standard error over test images:
``VariationalEvaluation(iw_samples=200, tight_iw_samples=5000)``.

For binarized images (Bernoulli) and 256-bin discretized-logistic likelihoods the model gives a probability
mass, so bits/dim = −log P / (D log 2). For continuous (dequantized, maybe logit-transformed) images it gives
a density in the model's space; the dataset's ``pixels.log_jacobian_to_pixels`` turns it into a density over pixel
values in [0, 256)^D, the space the flow literature quotes bits/dim in.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..datasets.base import Dataset, PixelData
from ..models.interfaces import VariationalModel
from .common import Metric, at_least, finite_metrics, model_device


@dataclass(frozen=True)
class VariationalEvaluation:
    r"""What :func:`evaluate_flow_vae` computes, and the settings :func:`~mflow_cli.plots.flow_vae.plot_flow_vae`
    shares with it.

    Arguments:
        iw_samples: Posterior draws k per test example for the ELBO, the KL term and the importance-weighted
            bound (the reference protocol: 200).
        tight_iw_samples: A second, larger k for a tighter importance-weighted bound (the reference
            protocol: 5000), from the same draws (the first ``iw_samples`` of them give the first bound);
            none by default. At least ``iw_samples``.
        batch_size: Decoder passes (examples × draws) per batch (memory and speed). Every example's draws go
            through the encoder once when k ≤ ``batch_size``; a larger k is split into chunks of draws.
        max_examples: Score only the first ``max_examples`` test examples (all by default).
        seed: Seed of the posterior draws (and of the figures' samples).
    """

    iw_samples: int = 100
    tight_iw_samples: int | None = None
    batch_size: int = 5000
    max_examples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        at_least("iw_samples", self.iw_samples, 1)
        if self.tight_iw_samples is not None:
            at_least("tight_iw_samples", self.tight_iw_samples, self.iw_samples)
        at_least("batch_size", self.batch_size, 1)
        if self.max_examples is not None:
            at_least("max_examples", self.max_examples, 1)


_NATS_BOUND = "nats per example, test mean"
METRICS: dict[str, Metric] = {
    "n_test": Metric("test examples", "count", "n/a", "The number of test examples scored."),
    "iw_samples": Metric("k", "count", "n/a",
                         "Posterior draws per test example for the ELBO, the KL term and the IW bound."),
    "tight_iw_samples": Metric("k (tight)", "count", "n/a",
                               "Posterior draws per test example for the tighter IW bound (when asked for)."),
    "data_dims": Metric("D", "count", "n/a", "Dimensions per example (pixels × channels)."),
    "test_elbo": Metric(
        "test ELBO", _NATS_BOUND, "higher",
        "E_q[log p(x|z_K) + log p(z_K) − log q_K(z_K|x)], the mean over the k draws: a lower bound on log p(x).",
    ),
    "test_elbo_se": Metric("test ELBO s.e.", "nats", "n/a",
                           "Standard error of the test ELBO over test examples, std / √n_test."),
    "test_iw_log_likelihood": Metric(
        "test log p(x), IW bound", _NATS_BOUND, "higher",
        "log (1/k) Σ_i p(x, z_i)/q(z_i|x) (Burda et al. 2016): ≥ the ELBO, → log p(x) as k grows.",
    ),
    "test_iw_log_likelihood_se": Metric("test log p(x) s.e.", "nats", "n/a",
                                        "Standard error of the IW bound over test examples, std / √n_test."),
    "test_tight_iw_log_likelihood": Metric(
        "test log p(x), tight IW bound", _NATS_BOUND, "higher",
        "The IW bound with k = tight_iw_samples draws (the same draws extended).",
    ),
    "test_tight_iw_log_likelihood_se": Metric("test log p(x) (tight) s.e.", "nats", "n/a",
                                              "Standard error of the tight IW bound over test examples."),
    "test_elbo_bits_per_dim": Metric(
        "test ELBO", "bits/dim", "lower",
        "−ELBO / (D ln 2); for Gaussian decoders over pixel values in [0, 256)^D.",
    ),
    "test_iw_bits_per_dim": Metric("test IW bound", "bits/dim", "lower", "−IW bound / (D ln 2), as the ELBO's."),
    "test_tight_iw_bits_per_dim": Metric("test tight IW bound", "bits/dim", "lower",
                                         "−tight IW bound / (D ln 2), as the ELBO's."),
    "test_reconstruction_log_likelihood": Metric(
        "test reconstruction", _NATS_BOUND, "higher", "E_q[log p(x|z_K)], the mean over the k draws.",
    ),
    "test_kl": Metric(
        "test KL term", _NATS_BOUND, "lower",
        "E_q[log q₀(z₀|x) − Σ log|det ∂z_k/∂z_{k−1}| − log p(z_K)], the KL(q_K ‖ p) estimate; ELBO = "
        "reconstruction − KL.",
    ),
    "test_flow_logdet": Metric("posterior flow log-det", _NATS_BOUND, "n/a",
                               "E_q[Σ_k log|det ∂z_k/∂z_{k−1}|], the flow's mean volume change."),
    "evaluation_seconds": Metric("evaluation time", "seconds", "lower", "Wall time of the bounds.", timing=True),
    "decoder_passes_per_s": Metric("decoder passes", "per second", "higher",
                                   "Posterior draws scored per second (examples × draws / time).", timing=True),
}


@dataclass(frozen=True)
class Bounds:
    """Per-example estimates (N,) from k posterior draws each: the ELBO and its two terms, the flow's log-det,
    and the IW bound for every requested k (``iw[k]``)."""

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    logdet: torch.Tensor
    iw: dict[int, torch.Tensor]


def standard_error(values: torch.Tensor) -> float:
    """std / √n of per-example values (N,) (unbiased std; 0 for one example): the s.e. of their mean."""
    if values.numel() < 2:
        return 0.0
    return float(values.double().std() / math.sqrt(values.numel()))


def importance_weighted_bounds(
    model: VariationalModel, x: torch.Tensor, iw_samples: list[int], batch_size: int
) -> Bounds:
    """The k-sample bounds log (1/k) Σ_{i ≤ k} w_i for every k in ``iw_samples``, from one run of max(k) draws.

    Each bound uses the first k draws of the same stream, so the bounds of one example grow with k only by
    the draws added. The ELBO, reconstruction, KL and log-det are means over the first ``min(iw_samples)``
    draws. A batch holds ``batch_size`` decoder passes: ``batch_size // K`` examples with all their K draws
    (one encoder pass each), or, for K > ``batch_size``, one example's draws in chunks of ``batch_size``
    combined with a running log-sum-exp.
    """
    ks = sorted(set(iw_samples))
    total, first = ks[-1], ks[0]
    device = model_device(model)
    rows = max(1, batch_size // total)
    chunk = min(total, batch_size)
    out: dict[str, list[torch.Tensor]] = {"elbo": [], "reconstruction": [], "kl": [], "logdet": []}
    iws: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    with torch.no_grad():
        for batch in torch.split(x, rows):
            batch = batch.to(device)
            running = torch.full((len(batch),), -math.inf, dtype=torch.float64, device=device)
            sums = {key: torch.zeros(len(batch), dtype=torch.float64, device=device) for key in out}
            done = 0
            while done < total:
                draws = min(chunk, total - done)
                parts = model.log_weights(batch, draws)
                log_w = parts["log_w"].double()
                for k in ks:
                    if done < k <= done + draws:  # the bound of the first k draws ends in this chunk
                        lse = torch.logaddexp(running, torch.logsumexp(log_w[: k - done], 0))
                        iws[k].append((lse - math.log(k)).cpu())
                if done < first:  # the ELBO and its terms from the first `first` draws
                    used = slice(0, first - done)
                    kl = parts["log_q0"] - parts["logdet"] - parts["log_pz"]
                    for key, value in (("elbo", log_w), ("reconstruction", parts["log_px_z"]), ("kl", kl),
                                       ("logdet", parts["logdet"])):
                        sums[key] += value[used].double().sum(0)
                running = torch.logaddexp(running, torch.logsumexp(log_w, 0))
                done += draws
            for key in out:
                out[key].append((sums[key] / first).cpu())
    cat = {key: torch.cat(values) for key, values in out.items()}
    return Bounds(cat["elbo"], cat["reconstruction"], cat["kl"], cat["logdet"],
                  {k: torch.cat(values) for k, values in iws.items()})


def batched_bounds(
    model: VariationalModel, x: torch.Tensor, iw_samples: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ELBO (mean over the ``iw_samples`` draws) and IW bound from the same draws, (N,) each.

    ``batch_size`` counts decoder passes (examples × samples), so memory does not grow with k.
    """
    bounds = importance_weighted_bounds(model, x, [iw_samples], batch_size)
    return bounds.elbo.float(), bounds.iw[iw_samples].float()


def evaluate_flow_vae(
    model: VariationalModel, dataset: Dataset, options: VariationalEvaluation = VariationalEvaluation()
) -> dict[str, float | int | None]:
    """Test ELBO, KL term and the k-sample importance-weighted bound(s) (Burda et al. 2016); keys in
    :data:`METRICS`.

    - ``n_test``, ``iw_samples`` (k), ``tight_iw_samples`` (when asked for), ``data_dims`` (D);
    - ``test_elbo`` (± ``test_elbo_se``): the mean ELBO over the k draws, in nats;
      ``test_reconstruction_log_likelihood`` and ``test_kl``, its two terms (ELBO = reconstruction − KL);
      ``test_flow_logdet``, the posterior flow's mean log-determinant;
    - ``test_iw_log_likelihood`` (± ``test_iw_log_likelihood_se``): the mean k-sample bound (≥ the ELBO);
      ``test_tight_iw_log_likelihood`` (± s.e.): the same with ``tight_iw_samples`` draws;
    - ``test_elbo_bits_per_dim``, ``test_iw_bits_per_dim``, ``test_tight_iw_bits_per_dim``: −bound / (D ln 2):
      a probability mass for Bernoulli and discretized-logistic decoders; for Gaussian decoders a density,
      converted to pixel values in [0, 256)^D with ``pixels.log_jacobian_to_pixels`` (only on
      :class:`~mflow_cli.datasets.base.PixelData`; absent otherwise);
    - ``evaluation_seconds``, ``decoder_passes_per_s``: timings.

    The standard errors are std / √n over test examples. Non-finite values are reported as None.
    """
    torch.manual_seed(options.seed)
    test = dataset.test_data()
    if options.max_examples is not None:
        test = test[: options.max_examples]
    ks = [options.iw_samples] + ([options.tight_iw_samples] if options.tight_iw_samples is not None else [])
    start = time.perf_counter()
    bounds = importance_weighted_bounds(model, test, ks, options.batch_size)
    seconds = time.perf_counter() - start
    dims = test[0].numel()
    iw = bounds.iw[options.iw_samples]
    metrics: dict[str, float | int | None] = {"n_test": len(test), "iw_samples": options.iw_samples}
    if options.tight_iw_samples is not None:
        metrics["tight_iw_samples"] = options.tight_iw_samples
    metrics |= {
        "data_dims": dims,
        "test_elbo": float(bounds.elbo.mean()), "test_elbo_se": standard_error(bounds.elbo),
        "test_iw_log_likelihood": float(iw.mean()), "test_iw_log_likelihood_se": standard_error(iw),
    }
    named = {"elbo": bounds.elbo, "iw": iw}
    if options.tight_iw_samples is not None:
        tight = bounds.iw[options.tight_iw_samples]
        metrics["test_tight_iw_log_likelihood"] = float(tight.mean())
        metrics["test_tight_iw_log_likelihood_se"] = standard_error(tight)
        named["tight_iw"] = tight
    offset = torch.zeros(len(test), dtype=torch.float64)
    if model.likelihood == "gaussian" and isinstance(dataset, PixelData):
        offset = dataset.pixels.log_jacobian_to_pixels(test).cpu().double()
    if model.likelihood != "gaussian" or isinstance(dataset, PixelData):
        for name, values in named.items():
            metrics[f"test_{name}_bits_per_dim"] = float(-(values + offset).mean() / (dims * math.log(2)))
    metrics |= {
        "test_reconstruction_log_likelihood": float(bounds.reconstruction.mean()),
        "test_kl": float(bounds.kl.mean()),
        "test_flow_logdet": float(bounds.logdet.mean()),
        "evaluation_seconds": seconds,
        "decoder_passes_per_s": len(test) * max(ks) / max(seconds, 1e-9),
    }
    return finite_metrics(metrics)
