"""Manifold flows: M-flow and PIE (Brehmer & Cranmer 2020) and the Denoising Normalizing Flow
(Horvat & Pfister 2021).

An outer flow f: R^D -> R^D splits its output into manifold coordinates u (d of them) and
off-manifold coordinates v. The decoder g(u) = f⁻¹([u, 0]) spans the learned manifold; an inner flow
h: R^d -> R^d models the density of u. Two densities follow:

- ambient (PIE/DNF): log p(x) = log q(h(u)) + log|det J_h| + log N(v; 0, s²) + log|det J_f|;
- on the manifold (M-flow eq. 3): log p(x) = log q(h(u)) + log|det J_h| − ½ log det(J_gᵀ J_g).

The DNF trains the ambient density on noise-inflated data x̃ = x + σε together with the denoising
reconstruction loss ‖x − g(u(x̃))‖²; M-flow trains the manifold on reconstruction first, then h.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..flows.builders import InnerKind, LinearKind, coupling_flow, inner_flow
from ..flows.image import image_flow
from ..jacobian import batched_jacobian, logdet_gram
from ..registry import MODELS
from .base import Model, standard_normal_log_prob, variant

Schedule = Literal["joint", "sequential", "alternating"]


class ManifoldFlow(Model):
    """Outer flow + projection + inner flow; the recipe's ``schedule`` picks how it trains."""

    family = "manifold"

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int = 1,
        outer_layers: int = 9,
        inner_layers: int = 1,
        outer_transform: Literal["rq-coupling", "affine-coupling"] = "rq-coupling",
        inner_transform: InnerKind = "affine-autoregressive",
        linear_transform: LinearKind = "lu",
        spline_bins: int = 5,
        spline_range: float = 3.0,
        hidden_features: int = 100,
        num_blocks: int = 2,
        dropout: float = 0.0,
        noise_std: float = 0.1,
        off_manifold_std: float = 0.1,
        nll_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        latent_l2_weight: float = 0.0,
        schedule: Schedule = "joint",
        architecture: Literal["dense", "image"] = "dense",
        levels: int = 4,
        channel_factor: int = 1,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.data_dim = int(torch.Size(self.data_shape).numel())
        if not 1 <= latent_dim <= self.data_dim:
            raise ValueError(f"latent_dim must be in 1..{self.data_dim}")
        self.latent_dim = latent_dim
        self.noise_std = noise_std
        self.off_manifold_std = off_manifold_std
        self.nll_weight = nll_weight
        self.reconstruction_weight = reconstruction_weight
        self.latent_l2_weight = latent_l2_weight
        self.schedule = schedule
        common = dict(
            linear=linear_transform, num_bins=spline_bins, tail_bound=spline_range,
            hidden_features=hidden_features, num_blocks=num_blocks, dropout=dropout,
        )
        if architecture == "image":  # multi-scale conv flow on (C, H, W) data, see flows/image.py
            self.outer = image_flow(
                self.data_shape, outer_layers, levels=levels, hidden_channels=hidden_features, num_blocks=num_blocks,
                num_bins=spline_bins, tail_bound=spline_range, dropout=dropout, channel_factor=channel_factor,
                latent_dim=latent_dim,
            )
        else:
            self.outer = coupling_flow(self.data_dim, outer_layers, kind=outer_transform, **common)
        self.inner = inner_flow(latent_dim, inner_layers, kind=inner_transform, **common)
        self._alternate = 0

    # ------------------------------------------------------------------ schedule
    @classmethod
    def phase_names(cls, schedule: Schedule = "joint", **_) -> list[str]:
        return {"joint": ["joint"], "sequential": ["manifold", "density"], "alternating": ["alternating"]}[
            schedule
        ]

    def phases(self) -> list[str]:
        return self.phase_names(self.schedule)

    def phase_parameters(self, phase: str):
        if phase == "manifold":
            return self.outer.parameters()
        if phase == "density":
            return self.inner.parameters()
        return self.parameters()

    # ------------------------------------------------------------------ maps
    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Outer flow: manifold coordinates u (B, d), off-manifold v (B, D−d), log|det J_f| (B,)."""
        out, logdet = self.outer(x.reshape(x.shape[0], -1))
        return out[:, : self.latent_dim], out[:, self.latent_dim :], logdet

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """g(u) = f⁻¹([u, 0]): a point on the learned manifold, flat (B, D)."""
        pad = u.new_zeros(u.shape[0], self.data_dim - self.latent_dim)
        x, _ = self.outer.inverse(torch.cat([u, pad], dim=1))
        return x

    def latent_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        z, logdet = self.inner(u)
        return standard_normal_log_prob(z) + logdet

    def log_prob_ambient(self, x: torch.Tensor) -> torch.Tensor:
        """PIE/DNF density of x in R^D (for the DNF: of the inflated data)."""
        u, v, logdet = self.project(x)
        return self.latent_log_prob(u) + standard_normal_log_prob(v, self.off_manifold_std) + logdet

    def log_prob_manifold(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """On-manifold log density at the projection of x, with the projection and its u.

        Exact (M-flow eq. 3); J_g comes from one batched forward-mode pass (:mod:`mflow_cli.jacobian`).
        """
        u, _, _ = self.project(x)
        x_proj, jac = batched_jacobian(self.decode, u)
        return self.latent_log_prob(u) - 0.5 * logdet_gram(jac), x_proj, u

    # ------------------------------------------------------------------ training
    def _inflate(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.noise_std * torch.randn_like(x) if self.noise_std > 0 else x

    def loss(self, x: torch.Tensor, phase: str) -> tuple[torch.Tensor, dict[str, float]]:
        x = x.reshape(x.shape[0], -1)
        if phase == "alternating":
            phase = "manifold" if self._alternate % 2 == 0 else "density"
            self._alternate += 1
        noisy = self._inflate(x)
        if phase == "density":
            with torch.no_grad():
                u, _, _ = self.project(noisy)
            nll = -self.latent_log_prob(u).mean()
            return self.nll_weight * nll, {"nll_latent": nll.item()}
        u, v, logdet = self.project(noisy)
        mse = F.mse_loss(self.decode(u), x)
        loss = self.reconstruction_weight * mse
        logs = {"mse": mse.item()}
        if phase == "joint":
            log_p = self.latent_log_prob(u) + standard_normal_log_prob(v, self.off_manifold_std) + logdet
            nll = -log_p.mean()
            loss = loss + self.nll_weight * nll
            logs["nll"] = nll.item()
        if self.latent_l2_weight > 0:
            loss = loss + self.latent_l2_weight * v.pow(2).sum(-1).mean()
        return loss, logs

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, device=self._device())
        u, _ = self.inner.inverse(z)
        return self.decode(u).reshape(n, *self.data_shape)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        log_p, _, u = self.log_prob_manifold(x)
        out = {"latents": u.detach(), "log_prob": log_p.detach()}
        if self.schedule == "joint":
            with torch.no_grad():
                out["log_prob_ambient"] = self.log_prob_ambient(x)
        return out

    def _device(self) -> torch.device:
        return next(self.parameters()).device


DNF = MODELS.register("dnf")(
    variant(
        ManifoldFlow, "DNF", "Denoising Normalizing Flow: joint NLL on inflated data + denoising MSE.",
        noise_std=0.1, off_manifold_std=0.1, schedule="joint",
    )
)
MFlow = MODELS.register("mflow")(
    variant(
        ManifoldFlow, "MFlow", "M-flow: manifold on reconstruction, then the inner density (sequential).",
        noise_std=0.0, reconstruction_weight=1000.0, schedule="sequential",
    )
)
