"""InfoMax VAE (Rezaabad & Vishwanath 2019), a baseline of the DNF paper's image benchmarks.

A VAE whose encoder also maximises the mutual information I(x; z), estimated with a discriminator
T(x, z) through the f-divergence (NWJ) bound I ≥ E_q(x,z)[T] − E_q(x)q(z)[exp(T − 1)], the product of
marginals drawn by shuffling z across the batch. The loss, which VAE and discriminator both minimise
(as in the DNF benchmark code), is

    −E_q[log N(x; g(z), σ²)] + β KL(q(z|x) ‖ N(0, I)) − γ Î(x; z).

Its density on the decoder's manifold is log p(g(u)) = log N(u; 0, I) − ½ log det(J_gᵀ J_g) at the
encoder mean u (M-flow eq. 3), the quantity the manifold flows are compared on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .autoencoders import Architecture, AutoEncoderModel, mlp
from .base import standard_normal_log_prob


class Discriminator(nn.Module):
    """T(x, z): an MLP on [flat x, z] with LeakyReLU(0.2) (DNF benchmark: 2000-1000-100-10-1).

    Arguments:
        data_dim: The data dimension D.
        latent_dim: The latent dimension d.
        hidden: The hidden layer widths.
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.net = mlp([data_dim + latent_dim, *hidden, 1], activation=lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.reshape(x.shape[0], -1), z], dim=1)).squeeze(-1)


def nwj_mutual_information(joint: torch.Tensor, marginal: torch.Tensor) -> torch.Tensor:
    """The f-divergence lower bound on I(x; z) from critic values on joint and shuffled pairs."""
    return joint.mean() - torch.exp(marginal - 1).mean()


class InfoMaxVAE(AutoEncoderModel):
    r"""Gaussian-decoder VAE + a mutual-information-maximising discriminator, trained jointly in one phase.

    References:
        | Learning Representations by Maximizing Mutual Information in Variational Autoencoders
          (Rezaabad & Vishwanath, 2019)
        | https://arxiv.org/abs/1912.13361

        | Auto-Encoding Variational Bayes (Kingma & Welling, 2014)
        | https://arxiv.org/abs/1312.6114

    Arguments:
        latent_dim: The latent dimension d.
        architecture: The encoder/decoder networks: ``dense`` (residual MLPs) or ``conv`` (convolutional,
            square images with a power-of-2 size).
        hidden_features: The width of the dense residual networks.
        num_blocks: The number of residual blocks of the dense encoder and decoder.
        channels: The channels of the first convolution (``conv``), doubling per level up to 8×.
        discriminator_hidden: The hidden widths of the critic T(x, z) (default 2000, 1000, 100, 10).
        decoder_std: The fixed std σ of the Gaussian decoder N(x; g(z), σ²).
        kl_weight: The weight β of KL(q(z|x) ‖ N(0, I)).
        mi_weight: The weight γ of the mutual-information estimate Î(x; z).
        dropout: The dropout probability of the dense networks.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int = 2,
        architecture: Architecture = "dense",
        hidden_features: int = 100,
        num_blocks: int = 2,
        channels: int = 32,
        discriminator_hidden: list[int] | None = None,
        decoder_std: float = 0.1,
        kl_weight: float = 1.0,
        mi_weight: float = 10.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(data_shape, latent_dim, 2 * latent_dim, architecture, hidden_features, num_blocks, channels,
                         dropout, noise_std=0.0)
        self.decoder_std, self.kl_weight, self.mi_weight = decoder_std, kl_weight, mi_weight
        hidden = [2000, 1000, 100, 10] if discriminator_hidden is None else list(discriminator_hidden)
        self.discriminator = Discriminator(self.data_dim, latent_dim, hidden)

    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.encoder(x)
        return stats[:, : self.latent_dim], stats[:, self.latent_dim :]

    def encoder_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self._posterior(x)[0]

    def latent_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_prob(u)

    def sample_latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=self._device())

    def loss(self, x: torch.Tensor, phase: str) -> tuple[torch.Tensor, dict[str, float]]:
        r"""−E_q[log N(x; g(z), σ²)] + β KL(q(z|x) ‖ N(0, I)) − γ Î(x; z), one reparametrised z per x.

        Î(x; z) = mean T(x, z) − mean exp(T(x, z̃) − 1) with z̃ the batch's z shuffled (the NWJ bound); the
        KL term is in closed form, −½ Σ (1 + log σ_q² − μ² − σ_q²).
        """
        mu, logvar = self._posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        flat = x.reshape(x.shape[0], -1)
        sq = (self.decoder(z) - flat).pow(2).sum(1)
        recon = (0.5 * sq / self.decoder_std**2).mean() + flat.shape[1] * math.log(
            self.decoder_std * math.sqrt(2 * math.pi)
        )
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
        shuffled = z[torch.randperm(z.shape[0], device=z.device)]
        mi = nwj_mutual_information(self.discriminator(flat, z), self.discriminator(flat, shuffled))
        loss = recon + self.kl_weight * kl - self.mi_weight * mi
        return loss, {"reconstruction": recon.item(), "kl": kl.item(), "mutual_information": mi.item(),
                      "mse": (sq.mean() / flat.shape[1]).item()}
