"""What evaluators and plotters need from a model, as typed interfaces.

A model says what it can do by the classes it derives from (``class ManifoldFlow(Model, ManifoldModel)``),
and evaluators take those types; nothing probes attributes with ``getattr``/``hasattr``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class ManifoldModel(ABC):
    """A model with a learned d-dimensional manifold in R^D and a density on it.

    ``data_dim`` is D, ``latent_dim`` is d; ``noise_std`` is the Gaussian inflation the model was trained
    on (0 without); ``has_ambient_density`` says whether :meth:`log_prob_ambient` is a trained density.
    """

    data_dim: int
    latent_dim: int
    noise_std: float
    has_ambient_density: bool

    @abstractmethod
    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Manifold coordinates u (B, d), off-manifold part (B, ·) and a log-det (B,) for flat x (B, D)."""

    @abstractmethod
    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """g(u): points (B, D) on the learned manifold."""

    @abstractmethod
    def log_prob_manifold(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """On-manifold log density at the projection of x, the projection (B, D) and its u (B, d)."""

    def log_prob_ambient(self, x: torch.Tensor) -> torch.Tensor:
        """Log density in R^D (only meaningful where ``has_ambient_density``)."""
        raise NotImplementedError(f"{type(self).__name__} has no ambient density")


class AtlasModel(ABC):
    """A density summed over charts (VQ-Flow): chart count, membership, the atlas's total mass."""

    num_charts: int

    @abstractmethod
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) (N,) summed over the member charts."""

    @abstractmethod
    def membership(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean (N, K): which charts each row of flat x belongs to."""

    @abstractmethod
    def chart_mass(self, n: int) -> float:
        """Monte-Carlo estimate of the atlas's total mass from ``n`` samples."""

    @abstractmethod
    def sample_charts(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Samples (n, D) of the atlas density, their charts k (n,) and latents z (n, d)."""


class VariationalModel(ABC):
    """A latent-variable model with an amortised posterior (VAE): importance weights per draw."""

    latent_dim: int
    likelihood: str

    @abstractmethod
    def log_weights(self, x: torch.Tensor, n_samples: int = 1) -> dict[str, torch.Tensor]:
        """``log_w`` (S, B) = log p(x, z) − log q(z|x) for S posterior draws, with its parts."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's location (B, D) (logits for Bernoulli) and log-scale (or None) at latents z (B, d)."""

    @property
    @abstractmethod
    def posterior_flow_label(self) -> str:
        """What the posterior flow is, for figure titles (e.g. ``radial, K = 16``; ``none``)."""
