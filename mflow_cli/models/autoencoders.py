"""Encoder/decoder networks and the shared set-up and density of the auto-encoder baselines (PAE, InfoMax VAE).

Both baselines span a learned manifold with a decoder g: R^d -> R^D and put a density p(u) on its
latent space. Their density on the manifold follows the injective change of variables of the M-flow
paper (eq. 3), the same formula the manifold flows are scored with, so every model is compared on
the same footing: log p(g(u)) = log p(u) − ½ log det(J_gᵀ J_g), evaluated at u = encoder(x).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from typing import Literal

import torch
from nflows.nn.nets import ResidualNet
from torch import nn

from ..errors import ConfigError
from ..jacobian import batched_jacobian, logdet_gram
from .base import Model
from .interfaces import ManifoldModel

Architecture = Literal["dense", "conv"]


def mlp(sizes: list[int], activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers ``sizes[0] -> … -> sizes[-1]`` with ``activation()`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """(B, C, R, R) -> (B, out): stride-2 4×4 convolutions down to 2×2, then a 2×2 convolution.

    With ``channels=32`` on 64×64 images this is the InfoMax-VAE encoder of the DNF benchmarks
    (32, 64, 128, 256, 256 channels, LeakyReLU 0.2).

    Arguments:
        out_features: The number of outputs.
        channels: The channels of the first convolution, doubling per level up to 8×.
    """

    def __init__(self, data_shape: tuple[int, ...], out_features: int, channels: int = 32) -> None:
        super().__init__()
        c, h, w = data_shape
        steps = _halvings(h, w)
        layers: list[nn.Module] = []
        ch_in, ch = c, channels
        for _ in range(steps - 1):
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch_in, ch = ch, min(2 * ch, 8 * channels)
        layers += [nn.Conv2d(ch_in, out_features, 2), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(B, d) -> flat (B, C·R·R): a 1×1 convolution, then stride-2 4×4 transposed convolutions up to R.

    Arguments:
        latent_dim: The latent dimension d.
        channels: The channels of the last hidden level, doubling per level towards the latent up to 8×.
    """

    def __init__(self, latent_dim: int, data_shape: tuple[int, ...], channels: int = 32) -> None:
        super().__init__()
        c, h, w = data_shape
        steps = _halvings(h, w)
        widths = [min(channels * 2**i, 8 * channels) for i in range(steps)][::-1]
        layers: list[nn.Module] = [nn.Unflatten(1, (latent_dim, 1, 1)), nn.Conv2d(latent_dim, widths[0], 1)]
        for i in range(steps):
            out = widths[i + 1] if i + 1 < steps else c
            layers += [nn.LeakyReLU(0.2), nn.ConvTranspose2d(widths[i], out, 4, 2, 1)]
        layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(u)


def _halvings(h: int, w: int) -> int:
    steps = int(math.log2(h)) if h > 0 else 0
    if h != w or h < 4 or 2**steps != h:
        raise ConfigError(f"architecture: conv needs square images with a power-of-2 size >= 4, got {h}×{w}")
    return steps


def make_encoder(
    data_shape: tuple[int, ...], out_features: int, architecture: Architecture, hidden_features: int,
    num_blocks: int, channels: int, dropout: float = 0.0,
) -> nn.Module:
    """Encoder from data (B, *data_shape) to (B, out_features)."""
    if architecture == "conv":
        if len(data_shape) != 3:
            raise ConfigError(f"architecture: conv needs image data (C, H, W), got shape {data_shape}")
        return ConvEncoder(data_shape, out_features, channels)
    dim = int(torch.Size(data_shape).numel())
    return nn.Sequential(
        nn.Flatten(),
        ResidualNet(dim, out_features, hidden_features, num_blocks=num_blocks, dropout_probability=dropout),
    )


def make_decoder(
    latent_dim: int, data_shape: tuple[int, ...], architecture: Architecture, hidden_features: int,
    num_blocks: int, channels: int, dropout: float = 0.0,
) -> nn.Module:
    """Decoder from (B, latent_dim) to flat data (B, D)."""
    if architecture == "conv":
        return ConvDecoder(latent_dim, data_shape, channels)
    dim = int(torch.Size(data_shape).numel())
    return ResidualNet(latent_dim, dim, hidden_features, num_blocks=num_blocks, dropout_probability=dropout)


class AutoEncoderModel(Model, ManifoldModel):
    """What the PAE and the InfoMax VAE share: an encoder, a decoder manifold g and a latent density.

    The constructor builds ``encoder`` (data -> ``encoder_features``) and ``decoder`` (u -> flat x) with
    :func:`make_encoder` / :func:`make_decoder`; subclasses give ``encoder_mean`` (data -> u),
    ``latent_log_prob(u)`` and ``sample_latent(n)``. The density lives on the decoder's manifold only.

    Arguments:
        latent_dim: The latent (manifold) dimension d.
        encoder_features: The encoder's output width (d for a point estimate, 2d for a Gaussian posterior).
        architecture: The encoder/decoder networks: ``dense`` (residual MLPs) or ``conv``.
        hidden_features: The width of the dense residual networks.
        num_blocks: The number of residual blocks of the dense encoder and decoder.
        channels: The channels of the convolutional networks' first level.
        dropout: The dropout probability of the dense networks.
        noise_std: The Gaussian noise std the model trains its reconstruction on (0: none).
    """

    has_ambient_density = False

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int,
        encoder_features: int,
        architecture: Architecture,
        hidden_features: int,
        num_blocks: int,
        channels: int,
        dropout: float,
        noise_std: float,
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        self.data_shape = tuple(data_shape)
        self.data_dim = int(torch.Size(self.data_shape).numel())
        self.latent_dim, self.noise_std = latent_dim, noise_std
        nets = dict(architecture=architecture, hidden_features=hidden_features, num_blocks=num_blocks,
                    channels=channels, dropout=dropout)
        self.encoder = make_encoder(self.data_shape, encoder_features, **nets)
        self.decoder = make_decoder(latent_dim, self.data_shape, **nets)

    @abstractmethod
    def encoder_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The manifold coordinates u = e(x) (B, d) of data (B, *data_shape)."""

    @abstractmethod
    def latent_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """log p(u) (B,) of latents u (B, d)."""

    @abstractmethod
    def sample_latent(self, n: int) -> torch.Tensor:
        """n latents u ~ p(u), (n, d)."""
    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """g(u): a point on the learned manifold, flat (B, D)."""
        return self.decoder(u)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Manifold coordinates u (B, d), as the manifold flows' ``project`` (no off-manifold part)."""
        u = self.encoder_mean(x.reshape(x.shape[0], *self.data_shape))
        return u, u.new_zeros(u.shape[0], 0), u.new_zeros(u.shape[0])

    def log_prob_at_latent(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(g(u)) on the manifold (M-flow eq. 3) and g(u), for latents u (B, d)."""
        x, jac = batched_jacobian(self.decode, u)
        return self.latent_log_prob(u) - 0.5 * logdet_gram(jac), x

    def log_prob_manifold(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """On-manifold log density at the reconstruction g(encoder(x)), the reconstruction and u."""
        u = self.project(x)[0]
        log_p, x_proj = self.log_prob_at_latent(u)
        return log_p, x_proj, u

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.decode(self.sample_latent(n)).reshape(n, *self.data_shape)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        log_p, _, u = self.log_prob_manifold(x)
        return {"latents": u.detach(), "log_prob": log_p.detach()}

    def _device(self) -> torch.device:
        return next(self.parameters()).device
