"""Manifold flows: M-flow and PIE (Brehmer & Cranmer 2020) and the Denoising Normalizing Flow
(Horvat & Pfister 2021).

An outer flow f: R^D -> R^D splits its output into manifold coordinates u (d of them) and
off-manifold coordinates v. The decoder g(u) = f⁻¹([u, 0]) spans the learned manifold; an inner flow
h: R^d -> R^d models the density of u. Two densities follow:

- ambient (PIE/DNF): log p(x) = log q(h(u)) + log|det J_h| + log N(v; 0, s²) + log|det J_f|;
- on the manifold (M-flow eq. 3): log p(x) = log q(h(u)) + log|det J_h| − ½ log det(J_gᵀ J_g).

The DNF trains the ambient density on noise-inflated data x̃ = x + σε together with the denoising
reconstruction loss ‖x − g(u(x̃))‖²; M-flow trains the manifold on reconstruction first, then h.

Kinds (``model.kind``): ``ambient_flow`` (plain ambient flow, d = D, no projection), ``pie`` (ambient
likelihood with a narrow off-manifold Gaussian), ``mflow`` (sequential), ``me_flow`` (M-flow with a
separate encoder u = e(x), manifold and density trained jointly on reconstruction + the exact
on-manifold likelihood), ``dnf``. Every kind takes ``schedule``: joint, sequential (manifold phase on
reconstruction, then the density phase on h) or alternating (one batch each, in turn).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from nflows.nn.nets import ResidualNet

from ..errors import ConfigError
from ..flows.builders import CouplingKind, InnerKind, LinearKind, coupling_flow, inner_flow
from ..flows.image import image_flow
from ..jacobian import batched_jacobian, decoder_jacobian, flow_outputs, logdet_gram
from ..registry import MODELS
from .base import Model, standard_normal_log_prob, variant

Schedule = Literal["joint", "sequential", "alternating"]


class ManifoldFlow(Model):
    """Outer flow + projection + inner flow; the recipe's ``schedule`` picks how it trains."""

    family = "manifold"

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int | None = 1,
        outer_layers: int = 9,
        inner_layers: int = 1,
        outer_transform: CouplingKind = "rq_coupling",
        inner_transform: InnerKind = "affine_autoregressive",
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
        encoder: Literal["flow", "network"] = "flow",
        encoder_blocks: int = 5,
        encoder_hidden: int = 100,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.data_dim = int(torch.Size(self.data_shape).numel())
        latent_dim = self.data_dim if latent_dim is None else latent_dim
        if not 1 <= latent_dim <= self.data_dim:
            raise ConfigError(f"latent_dim must be in 1..{self.data_dim}")
        self.latent_dim = latent_dim
        self.noise_std = noise_std
        self.off_manifold_std = off_manifold_std
        self.nll_weight = nll_weight
        self.reconstruction_weight = reconstruction_weight
        self.latent_l2_weight = latent_l2_weight
        self.schedule = schedule
        common = dict(
            linear=linear_transform, spline_bins=spline_bins, spline_range=spline_range,
            hidden_features=hidden_features, num_blocks=num_blocks, dropout=dropout,
        )
        if architecture == "image":  # multi-scale conv flow on (C, H, W) data, see flows/image.py
            self.outer = image_flow(
                self.data_shape, outer_layers, levels=levels, hidden_channels=hidden_features, num_blocks=num_blocks,
                spline_bins=spline_bins, spline_range=spline_range, dropout=dropout, channel_factor=channel_factor,
                latent_dim=latent_dim,
            )
        else:
            self.outer = coupling_flow(self.data_dim, outer_layers, kind=outer_transform, **common)
        self.inner = inner_flow(latent_dim, inner_layers, kind=inner_transform, **common)
        # Me-flow: u = e(x) from a separate residual network instead of the outer flow's first d outputs.
        self.encoder = (
            ResidualNet(self.data_dim, latent_dim, hidden_features=encoder_hidden, num_blocks=encoder_blocks)
            if encoder == "network" else None
        )
        self._alternate = 0

    # ------------------------------------------------------------------ schedule
    @classmethod
    def phase_names(cls, schedule: Schedule = "joint", **_) -> list[str]:
        return {"joint": ["joint"], "sequential": ["manifold", "density"], "alternating": ["alternating"]}[
            schedule
        ]

    def phases(self) -> list[str]:
        return self.phase_names(self.schedule)

    @property
    def has_ambient_density(self) -> bool:
        """Whether the model was trained on (and offers) a density in R^D: flow/PIE/DNF, joint schedule."""
        return self.encoder is None and self.schedule == "joint"

    def phase_parameters(self, phase: str):
        if phase == "manifold":
            if self.encoder is not None:
                return [*self.outer.parameters(), *self.encoder.parameters()]
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

    def manifold_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """u of each point: the encoder's output (Me-flow) or the outer flow's first d outputs."""
        x = x.reshape(x.shape[0], -1)
        return self.encoder(x) if self.encoder is not None else self.project(x)[0]

    def latent_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        z, logdet = self.inner(u)
        return standard_normal_log_prob(z) + logdet

    def log_prob_ambient(self, x: torch.Tensor) -> torch.Tensor:
        """PIE/DNF density of x in R^D (for the DNF: of the inflated data)."""
        u, v, logdet = self.project(x)
        return self.latent_log_prob(u) + standard_normal_log_prob(v, self.off_manifold_std) + logdet

    def log_prob_manifold(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """On-manifold log density at the projection of x, with the projection and its u.

        Exact (M-flow eq. 3); J_g from :func:`mflow_cli.jacobian.decoder_jacobian`: one inverse pass carrying the
        tangents by each layer's forward-mode rule (``torch.func.jvp`` when the result must stay differentiable).
        With d = D (the plain ambient flow) the manifold is R^D itself: x is its own projection and
        ½ log det(J_gᵀJ_g) = −log|det J_f|, read off the flow (no Gram matrix, which may be ill-conditioned
        far from the data).
        """
        if self.latent_dim == self.data_dim and self.encoder is None:
            u, _, logdet = self.project(x)
            return self.latent_log_prob(u) + logdet, x.reshape(x.shape[0], -1), u
        x = x.reshape(x.shape[0], -1)
        u = self.encoder(x) if self.encoder is not None else flow_outputs(self.outer, x)[:, : self.latent_dim]
        x_proj, jac = decoder_jacobian(self.outer, u, self.data_dim)
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
                u = self.manifold_coordinates(noisy)
            nll = -self.latent_log_prob(u).mean()
            return self.nll_weight * nll, {"nll_latent": nll.item()}
        nll = None
        need_recon = self.reconstruction_weight > 0 or phase == "manifold"
        if self.encoder is not None:  # Me-flow: reconstruction through e, exact on-manifold likelihood
            latents = u = self.encoder(noisy)
            if phase == "joint":
                recon, jac = batched_jacobian(self.decode, u)
                nll = -(self.latent_log_prob(u) - 0.5 * logdet_gram(jac)).mean()
            else:
                recon = self.decode(u)
        else:
            u, v, logdet = self.project(noisy)
            latents = torch.cat([u, v], 1)
            # a plain flow (d = D) reconstructs exactly; PIE does not train on reconstruction
            recon = self.decode(u) if need_recon and self.latent_dim < self.data_dim else None
            if phase == "joint":
                nll = -(self.latent_log_prob(u) + standard_normal_log_prob(v, self.off_manifold_std) + logdet).mean()
        loss = x.new_zeros(())
        logs = {}
        if recon is not None and need_recon:
            mse = F.mse_loss(recon, x)
            loss = loss + self.reconstruction_weight * mse
            logs["mse"] = mse.item()
        if nll is not None:
            loss = loss + self.nll_weight * nll
            logs["nll"] = nll.item()
        if self.latent_l2_weight > 0:  # the research code's uvl2reg: L2 on the latents after the outer map
            loss = loss + self.latent_l2_weight * latents.pow(2).sum(-1).mean()
        return loss, logs

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        ref = next(self.parameters())
        z = torch.randn(n, self.latent_dim, device=ref.device, dtype=ref.dtype)
        u, _ = self.inner.inverse(z)
        return self.decode(u).reshape(n, *self.data_shape)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        log_p, _, u = self.log_prob_manifold(x)
        out = {"latents": u.detach(), "log_prob": log_p.detach()}
        if self.has_ambient_density:
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
AmbientFlow = MODELS.register("ambient_flow")(
    variant(
        ManifoldFlow, "AmbientFlow", "Plain ambient flow on R^D (latent dim = data dim): maximum likelihood.",
        latent_dim=None, outer_layers=5, inner_layers=0, noise_std=0.0, reconstruction_weight=0.0, schedule="joint",
    )
)
PIE = MODELS.register("pie")(
    variant(
        ManifoldFlow, "PIE", "PIE: ambient likelihood with a narrow Gaussian (std 0.01) off the manifold, no noise.",
        noise_std=0.0, off_manifold_std=0.01, reconstruction_weight=0.0, schedule="joint",
    )
)
MeFlow = MODELS.register("me_flow")(
    variant(
        ManifoldFlow, "MeFlow",
        "Me-flow: separate encoder; manifold and density trained jointly (reconstruction + on-manifold NLL).",
        encoder="network", noise_std=0.0, reconstruction_weight=1000.0, schedule="joint",
    )
)
