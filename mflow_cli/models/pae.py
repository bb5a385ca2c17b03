"""Probabilistic Auto-Encoder (Böhm & Seljak 2020), a baseline of the DNF paper.

Trained in two phases: an auto-encoder on the reconstruction error (``manifold`` phase), then a
normalizing flow h on the encoder's latents u = e(x) (``density`` phase, encoder frozen). Its density:

- of the latents, p(u) = N(h(u); 0, I) |det J_h(u)|;
- on the decoder's manifold, log p(g(u)) = log p(u) − ½ log det(J_gᵀ J_g) at u = e(x) (M-flow eq. 3),
  the quantity the manifold flows are compared on; samples are g(h⁻¹(z)), z ~ N(0, I).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..flows.builders import InnerKind, LinearKind, inner_flow
from .autoencoders import Architecture, AutoEncoderModel
from .base import standard_normal_log_prob


class ProbabilisticAutoEncoder(AutoEncoderModel):
    r"""Auto-encoder (dense residual or convolutional) + a normalizing flow on its latent space.

    References:
        | Probabilistic Auto-Encoder (Böhm & Seljak, 2020)
        | https://arxiv.org/abs/2006.05479

    Arguments:
        latent_dim: The latent (manifold) dimension d.
        architecture: The encoder/decoder networks: ``dense`` (residual MLPs) or ``conv`` (convolutional,
            square images with a power-of-2 size).
        hidden_features: The width of the dense residual networks.
        num_blocks: The number of residual blocks of the dense encoder and decoder.
        channels: The channels of the first convolution (``conv``), doubling per level up to 8×.
        inner_layers: The number of layers of the latent flow h.
        inner_transform: The latent flow's layer: ``affine_autoregressive``, ``rq_coupling`` or
            ``affine_coupling``.
        linear: The mixing between flow layers: ``lu`` (permutation + LU-linear) or ``permutation``.
        inner_hidden_features: The width of the latent flow's conditioner networks.
        spline_bins: The number of bins of the rational-quadratic splines (``rq_coupling``).
        spline_range: The splines' interval [−B, B] (linear tails outside).
        dropout: The dropout probability in every network.
        noise_std: The std of the Gaussian noise added to the auto-encoder's inputs in the manifold phase.
        reconstruction_weight: The weight of the mean squared reconstruction error.
        nll_weight: The weight of the latent negative log-likelihood in the density phase.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int = 1,
        architecture: Architecture = "dense",
        hidden_features: int = 100,
        num_blocks: int = 10,
        channels: int = 32,
        inner_layers: int = 1,
        inner_transform: InnerKind = "affine_autoregressive",
        linear: LinearKind = "lu",
        inner_hidden_features: int = 100,
        spline_bins: int = 5,
        spline_range: float = 3.0,
        dropout: float = 0.0,
        noise_std: float = 0.0,
        reconstruction_weight: float = 1000.0,
        nll_weight: float = 1.0,
    ) -> None:
        super().__init__(data_shape, latent_dim, latent_dim, architecture, hidden_features, num_blocks, channels,
                         dropout, noise_std)
        self.reconstruction_weight, self.nll_weight = reconstruction_weight, nll_weight
        self.inner = inner_flow(
            latent_dim, inner_layers, kind=inner_transform, linear=linear, spline_bins=spline_bins,
            spline_range=spline_range, hidden_features=inner_hidden_features, num_blocks=2, dropout=dropout,
        )

    @classmethod
    def phase_names(cls, **_) -> list[str]:
        return ["manifold", "density"]

    def phases(self) -> list[str]:
        return self.phase_names()

    def phase_parameters(self, phase: str):
        if phase == "density":
            return self.inner.parameters()
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def encoder_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def latent_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        z, logdet = self.inner(u)
        return standard_normal_log_prob(z) + logdet

    def sample_latent(self, n: int) -> torch.Tensor:
        u, _ = self.inner.inverse(torch.randn(n, self.latent_dim, device=self._device()))
        return u

    def loss(self, x: torch.Tensor, phase: str) -> tuple[torch.Tensor, dict[str, float]]:
        r"""The phase's objective, averaged over the batch.

        ``manifold``: λ_rec · mean ‖g(e(x + σε)) − x‖² / D (ε ~ N(0, I), σ = ``noise_std``);
        ``density`` (encoder frozen): −λ_nll · mean log p(u), log p(u) = log N(h(u); 0, I) + log|det J_h(u)|,
        u = e(x).
        """
        if phase == "density":
            with torch.no_grad():
                u = self.encoder(x)
            nll = -self.latent_log_prob(u).mean()
            return self.nll_weight * nll, {"nll_latent": nll.item()}
        noisy = x + self.noise_std * torch.randn_like(x) if self.noise_std > 0 else x
        mse = F.mse_loss(self.decoder(self.encoder(noisy)), x.reshape(x.shape[0], -1))
        return self.reconstruction_weight * mse, {"mse": mse.item()}
