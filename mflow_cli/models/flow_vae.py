"""Flow-VAEs: VAEs whose Gaussian posterior is enriched by a normalizing flow on the latent.

q₀(z₀|x) = N(μ(x), diag σ²(x)), z_K = f_K ∘ … ∘ f₁(z₀), and (Rezende & Mohamed 2015, eq. 20)

    ELBO(x) = E_q₀[ log p(x|z_K) + log p(z_K) − log q₀(z₀|x) + Σ_k log|det ∂f_k/∂z_{k−1}| ],

estimated with reparametrized samples; p(z) = N(0, I). With K = 0 (or ``posterior_flow: none``) this is the
plain VAE of Kingma & Welling (2014). The fmu2/flow-VAE variants are constructor options: static flows
(parameters learned globally), dynamic flows (``dynamic``: the encoder outputs them per input) and a
convolutional model (``architecture: conv``). The IAF steps read the encoder's last hidden layer h as their
context, and the Sylvester steps always take their parameters from the encoder (both amortised).

Likelihoods p(x|z): Bernoulli (binarized images), Gaussian with a per-pixel learned scale (dequantized,
optionally logit-transformed images) and the discretized logistic of PixelCNN++ over 256 bins on [0, 1].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..flows.latent import LatentFlow, LatentFlowKind
from .autoencoders import mlp
from .base import Model, standard_normal_log_prob
from .interfaces import VariationalModel

Likelihood = Literal["bernoulli", "gaussian", "logistic"]
MIN_LOG_SCALE = -7.0


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Σ over the last dim of log N(z; mean, exp(log_var))."""
    return -0.5 * ((z - mean).pow(2) * torch.exp(-log_var) + log_var + math.log(2 * math.pi)).sum(-1)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ over the last dim of log Bernoulli(x; sigmoid(logits)) = x·logits − softplus(logits), x broadcasting.

    The same value as ``-binary_cross_entropy_with_logits(logits, x).sum(-1)`` without expanding x to the
    draws' shape (B, D) -> (S, B, D).
    """
    return (logits * x).sum(-1) - F.softplus(logits).sum(-1)


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Σ log P(bin of x) for x ∈ [0, 1] in 256 bins of width 1/256, edge bins open (Salimans et al. 2017)."""
    k = torch.floor(x * 256).clamp(0, 255)
    centre = (k + 0.5) / 256
    inv_s = torch.exp(-log_scale)
    plus_in = inv_s * (centre + 0.5 / 256 - mean)
    min_in = inv_s * (centre - 0.5 / 256 - mean)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    mid_in = inv_s * (centre - mean)
    log_pdf_mid = mid_in - log_scale - 2 * F.softplus(mid_in) - math.log(256)
    mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    out = torch.where(k < 0.5, log_cdf_plus, torch.where(k > 254.5, log_one_minus_cdf_min, mid))
    return out.sum(-1)


class FlowVAE(Model, VariationalModel):
    r"""A VAE whose Gaussian posterior q₀(z|x) is followed by a K-step normalizing flow on the latent.

    References:
        | Auto-Encoding Variational Bayes (Kingma & Welling, 2014)
        | https://arxiv.org/abs/1312.6114

        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770

        | Improving Variational Auto-Encoders using Householder Flow (Tomczak & Welling, 2016)
        | https://arxiv.org/abs/1611.09630

        | NICE: Non-linear Independent Components Estimation (Dinh et al., 2014)
        | https://arxiv.org/abs/1410.8516

        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        | https://arxiv.org/abs/1606.04934

        | Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018)
        | https://arxiv.org/abs/1803.05649

    Arguments:
        latent_dim: The latent dimension d.
        posterior_flow: The flow on the posterior's latent: ``none`` (a plain VAE), ``planar``, ``radial``,
            ``householder``, ``nice``, ``iaf``, ``sylvester_orthogonal``, ``sylvester_householder`` or
            ``sylvester_triangular``.
        posterior_layers: The number of flow steps K (NICE adds a final scaling step).
        dynamic: Whether the encoder outputs the flow parameters per input (amortised flow) rather than
            learning them globally; the Sylvester flows are always amortised, IAF reads the encoder's context.
        architecture: The encoder/decoder: ``dense`` (MLPs) or ``conv`` (two stride-2 convolutions each way,
            images with height and width divisible by 4).
        hidden: The hidden widths of the dense encoder (the decoder mirrors them); the last is the width of
            the encoder's hidden state h in either architecture.
        conv_channels: The two channel counts of the convolutional encoder (``conv``).
        nice_hidden: The width of the NICE coupling networks.
        iaf_hidden: The width of the IAF steps' MADE hidden layer.
        sylvester_columns: The number M of orthonormal columns in each orthogonal Sylvester step (1..d;
            default d).
        sylvester_reflections: The number of Householder reflections making Q in each Householder Sylvester
            step.
        likelihood: The decoder p(x|z): ``bernoulli`` (binarized data), ``gaussian`` (per-pixel learned
            scale) or ``logistic`` (256-bin discretized logistic on [0, 1]).
        kl_warmup_steps: The number of training steps over which the KL weight β rises linearly to 1
            (0: β = 1 throughout).
        encode_samples: The number of posterior draws averaged by :meth:`encode`.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int = 20,
        posterior_flow: LatentFlowKind = "none",
        posterior_layers: int = 16,
        dynamic: bool = False,
        architecture: Literal["dense", "conv"] = "dense",
        hidden: list[int] = [512, 256],  # noqa: B006  (a list so the resolved recipe is plain YAML)
        conv_channels: list[int] = [32, 64],  # noqa: B006
        nice_hidden: int = 64,
        iaf_hidden: int = 64,
        sylvester_columns: int | None = None,
        sylvester_reflections: int = 4,
        likelihood: Likelihood = "bernoulli",
        kl_warmup_steps: int = 0,
        encode_samples: int = 16,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.data_dim = int(torch.Size(self.data_shape).numel())
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        if posterior_layers < 0:
            raise ConfigError(f"posterior_layers must be >= 0, got {posterior_layers}")
        if encode_samples < 1:
            raise ConfigError(f"encode_samples must be >= 1, got {encode_samples}")
        if not hidden:
            raise ConfigError("hidden must list at least one layer width")
        self.latent_dim, self.likelihood, self.architecture = latent_dim, likelihood, architecture
        self.kl_warmup_steps, self.encode_samples = kl_warmup_steps, encode_samples
        width = hidden[-1]
        self.flow = LatentFlow(
            posterior_flow, latent_dim, posterior_layers if posterior_flow != "none" else 0, dynamic=dynamic,
            nice_hidden=nice_hidden, iaf_hidden=iaf_hidden, context_features=width,
            sylvester_columns=sylvester_columns, sylvester_reflections=sylvester_reflections,
        )
        self.dynamic = self.flow.dynamic
        self.out_factor = 1 if likelihood == "bernoulli" else 2  # mean (+ log-scale) per pixel
        if architecture == "dense":
            self.encoder = nn.Sequential(mlp([self.data_dim, *hidden]), nn.ReLU())
            self.decoder = mlp([latent_dim, *reversed(hidden), self.out_factor * self.data_dim])
        else:
            self.encoder, self.decoder = self._conv_nets(conv_channels, width)
        self.posterior_head = nn.Linear(width, 2 * latent_dim)
        if self.dynamic:
            self.flow_head = nn.Linear(width, self.flow.num_params)
            with torch.no_grad():  # start near the static initialisation, a near-identity flow
                self.flow_head.weight.mul_(0.01)
                self.flow_head.bias.copy_(self.flow.init_params())
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def _conv_nets(self, channels: list[int], width: int) -> tuple[nn.Module, nn.Module]:
        """Two stride-2 4×4 convolutions down (H, W → H/4, W/4), their transposes up."""
        if len(self.data_shape) != 3 or self.data_shape[1] % 4 or self.data_shape[2] % 4 or len(channels) != 2:
            raise ConfigError("the conv flow-VAE needs images (C, H, W) with H, W divisible by 4 and 2 conv_channels")
        c, h, w = self.data_shape
        c1, c2 = channels
        flat = c2 * (h // 4) * (w // 4)
        encoder = nn.Sequential(
            nn.Conv2d(c, c1, 4, 2, 1), nn.ReLU(), nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU(), nn.Flatten(),
            nn.Linear(flat, width), nn.ReLU(),
        )
        decoder = nn.Sequential(
            nn.Linear(self.latent_dim, width), nn.ReLU(), nn.Linear(width, flat), nn.ReLU(),
            nn.Unflatten(1, (c2, h // 4, w // 4)), nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(c1, self.out_factor * c, 4, 2, 1), nn.Flatten(),
        )
        return encoder, decoder

    # ------------------------------------------------------------------ pieces
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """μ (B, d), log σ² (B, d) of q₀, the flow parameters (B, P) when the flow is dynamic (else None) and
        the encoder's last hidden layer h (B, H), the IAF context."""
        inp = x.reshape(x.shape[0], *self.data_shape) if self.architecture == "conv" else x.reshape(x.shape[0], -1)
        h = self.encoder(inp)
        mean, log_var = self.posterior_head(h).chunk(2, dim=-1)
        return mean, log_var, (self.flow_head(h) if self.dynamic else None), h

    @property
    def posterior_flow_label(self) -> str:
        return self.flow.label if self.flow.length else "none (plain VAE)"

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder outputs, flat (B, D): Bernoulli logits, or mean and log-scale."""
        out = self.decoder(z).reshape(z.shape[0], self.out_factor, self.data_dim)
        if self.out_factor == 1:
            return out[:, 0], None
        return out[:, 0], out[:, 1].clamp(min=MIN_LOG_SCALE)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) (…, B) for flat x (B, D) and latents z (…, B, d): every draw of z is decoded against its x."""
        lead = z.shape[:-1]
        loc, log_scale = self.decode(z.reshape(-1, self.latent_dim))
        loc = loc.reshape(*lead, self.data_dim)
        if self.likelihood == "bernoulli":
            return bernoulli_log_prob(x, loc)
        log_scale = log_scale.reshape(*lead, self.data_dim)
        if self.likelihood == "gaussian":
            return gaussian_log_prob(x, loc, 2 * log_scale)
        return discretized_logistic_log_prob(x, loc, log_scale)

    def log_weights(self, x: torch.Tensor, n_samples: int = 1) -> dict[str, torch.Tensor]:
        """Per-sample terms of the ELBO, each (S, B): ``log_w = log p(x|z_K) + log p(z_K) − log q_K(z_K|x)``.

        Also ``log_px_z``, ``log_pz``, ``log_q0`` and ``logdet`` (Σ log|det| of the flow) and ``z``
        (S, B, d), ``z0``.
        """
        x = x.reshape(x.shape[0], -1)
        b, s, d = x.shape[0], n_samples, self.latent_dim
        mean, log_var, params, h = self.posterior(x)
        eps = torch.randn(s, b, d, device=x.device, dtype=x.dtype)
        z0 = mean + torch.exp(0.5 * log_var) * eps
        log_q0 = gaussian_log_prob(z0, mean, log_var)
        zk, logdet = self.flow(z0, params, h)  # per-input parameters and context broadcast over the S draws
        log_px_z = self.log_likelihood(x, zk)
        log_pz = standard_normal_log_prob(zk)
        log_w = log_px_z + log_pz - log_q0 + logdet
        return {"log_w": log_w, "log_px_z": log_px_z, "log_pz": log_pz, "log_q0": log_q0, "logdet": logdet,
                "z": zk, "z0": z0, "mean": mean, "log_var": log_var}

    # ------------------------------------------------------------------ Model interface
    def loss(self, x: torch.Tensor, phase: str) -> tuple[torch.Tensor, dict[str, float]]:
        r"""The negative single-draw ELBO with a KL weight β (Rezende & Mohamed 2015, eq. 20), batch mean:

            −[log p(x|z_K) − β (log q₀(z₀|x) − Σ_k log|det ∂z_k/∂z_{k−1}| − log p(z_K))],

        z₀ = μ(x) + σ(x) ⊙ ε, ε ~ N(0, I), z_K = f_K ∘ … ∘ f₁(z₀); β rises linearly from 1/``kl_warmup_steps``
        to 1 over the first ``kl_warmup_steps`` training steps (β = 1 without warm-up: −ELBO).
        """
        parts = self.log_weights(x, 1)
        kl = parts["log_q0"] - parts["logdet"] - parts["log_pz"]  # log q_K(z_K|x) − log p(z_K)
        beta = 1.0
        if self.training:
            if self.kl_warmup_steps > 0:
                beta = min(1.0, (float(self.steps_seen) + 1) / self.kl_warmup_steps)
            self.steps_seen += 1
        recon = parts["log_px_z"].mean()
        loss = -(recon - beta * kl.mean())
        elbo = parts["log_w"].mean()
        return loss, {"elbo": elbo.item(), "recon": recon.item(), "kl": kl.mean().item(),
                      "logdet": parts["logdet"].mean().item()}

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Decoder means at z ~ p(z): Bernoulli probabilities, or the Gaussian/logistic location."""
        z = torch.randn(n, self.latent_dim, device=self.steps_seen.device)
        loc, _ = self.decode(z)
        if self.likelihood == "bernoulli":
            loc = torch.sigmoid(loc)
        elif self.likelihood == "logistic":
            loc = loc.clamp(0, 1)
        return loc.reshape(n, *self.data_shape)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``latents``: posterior mean of z_K (average of ``encode_samples`` draws); ``samples``: one z_K draw;
        ``z0_mean`` / ``z0_log_var``: the Gaussian q₀; ``elbo``: the ELBO over those draws (nats)."""
        parts = self.log_weights(x, self.encode_samples)
        return {"latents": parts["z"].mean(0), "samples": parts["z"][0], "z0_mean": parts["mean"],
                "z0_log_var": parts["log_var"], "elbo": parts["log_w"].mean(0)}
