"""Manifold flows: M-flow and PIE (Brehmer & Cranmer 2020) and the Denoising Normalizing Flow
(Horvat & Pfister 2021).

An outer flow f: R^D -> R^D splits its output into manifold coordinates u (d of them) and
off-manifold coordinates v. The decoder g(u) = f⁻¹([u, 0]) spans the learned manifold; an inner flow
h: R^d -> R^d models the density of u. Two densities follow:

- ambient (PIE/DNF): log p(x) = log q(h(u)) + log|det J_h| + log N(v; 0, s²) + log|det J_f|;
- on the manifold (M-flow eq. 3): log p(x) = log q(h(u)) + log|det J_h| − ½ log det(J_gᵀ J_g).

The DNF trains the ambient density on noise-inflated data x̃ = x + σε together with the denoising
reconstruction loss ‖x − g(u(x̃))‖²; M-flow trains the manifold on reconstruction first, then h.

Kinds (``model.kind``, presets of this one class in :mod:`mflow_cli.app.catalog`): ``ambient_flow`` (plain
ambient flow, d = D, no projection), ``pie`` (ambient likelihood with a narrow off-manifold Gaussian),
``mflow`` (sequential), ``me_flow`` (M-flow with a separate encoder u = e(x), manifold and density trained
jointly on reconstruction + the exact on-manifold likelihood), ``dnf``. The objectives are the functions of
:mod:`mflow_cli.models.objectives`; which one trains in which phase follows from the configuration
(:meth:`ManifoldFlow.objective`).
"""

from __future__ import annotations

from typing import Literal

import torch
from nflows.nn.nets import ResidualNet

from ..errors import ConfigError
from ..flows.builders import CouplingKind, InnerKind, LinearKind, coupling_flow, inner_flow
from ..flows.fused import flow_pass
from ..flows.image import image_flow
from ..jacobian import decoder_jacobian, flow_outputs, logdet_gram
from . import objectives
from .base import Model, standard_normal_log_prob
from .interfaces import ManifoldModel

Schedule = Literal["joint", "sequential", "alternating"]


class ManifoldFlow(Model, ManifoldModel):
    r"""Outer flow + projection + inner flow: M-flow, Me-flow, PIE, the DNF and the plain ambient flow.

    An outer flow f: R^D -> R^D (``layers`` coupling steps; a multi-scale convolutional flow for images) gives
    x -> [u, v]; the decoder g(u) = f⁻¹([u, 0]) spans the learned d-dimensional manifold; an inner flow h on u
    gives its density. ``schedule`` sets the training phases: ``joint`` (one objective for everything),
    ``sequential`` (the manifold on reconstruction, then the density on u) or ``alternating`` (one batch each).

    References:
        | Flows for simultaneous manifold learning and density estimation (Brehmer & Cranmer, 2020)
        | https://arxiv.org/abs/2003.13913
        | Denoising Normalizing Flow (Horvat & Pfister, NeurIPS 2021)

    Arguments:
        latent_dim: The manifold dimension d (1 to D; null means d = D, a plain flow without a manifold).
        outer_layers: The number of coupling steps of the outer flow f (per level for images).
        inner_layers: The number of steps of the inner flow h on the manifold coordinates.
        outer_transform: The outer flow's coupling: rational-quadratic splines or affine.
        inner_transform: The inner flow's steps: masked affine autoregressive, spline or affine couplings.
        linear: The mixing layer between steps: a permutation followed by an LU-linear map, or a permutation.
        spline_bins: The number of bins of each rational-quadratic spline.
        spline_range: The spline's interval [−B, B]; outside it the spline is the identity (linear tails).
        hidden_features: The width of the conditioner networks (channels for images).
        num_blocks: The residual blocks of each conditioner network.
        dropout: The dropout probability in the conditioner networks.
        noise_std: The std σ of the Gaussian inflation x̃ = x + σε applied to training batches (DNF).
        off_manifold_std: The std of the Gaussian density of the off-manifold coordinates v (PIE/DNF).
        nll_weight: The weight of the likelihood term.
        reconstruction_weight: The weight β of the reconstruction error ‖x − g(u)‖².
        latent_l2_weight: The weight of an L2 penalty on the outer flow's output [u, v] (the research code's
            ``uvl2reg``).
        schedule: How the phases train: joint, sequential (manifold, then density) or alternating.
        architecture: ``dense`` coupling flows on flat vectors, or the ``image`` multi-scale flow on (C, H, W).
        levels: The number of squeeze levels of the image flow.
        channel_factor: How many channels of each image level join the manifold coordinates.
        encoder: Where u comes from: the outer ``flow`` (M-flow) or a separate residual ``network`` (Me-flow).
        encoder_blocks: The residual blocks of the Me-flow encoder.
        encoder_hidden: The width of the Me-flow encoder.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int | None = 1,
        outer_layers: int = 9,
        inner_layers: int = 1,
        outer_transform: CouplingKind = "rq_coupling",
        inner_transform: InnerKind = "affine_autoregressive",
        linear: LinearKind = "lu",
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
            raise ConfigError(f"latent_dim must be in 1..{self.data_dim} (the data dimension), got {latent_dim}")
        if not noise_std >= 0 or not off_manifold_std > 0:
            raise ConfigError(f"noise_std must be >= 0 and off_manifold_std > 0, got {noise_std}, {off_manifold_std}")
        self.latent_dim = latent_dim
        self.noise_std = noise_std
        self.off_manifold_std = off_manifold_std
        self.nll_weight = nll_weight
        self.reconstruction_weight = reconstruction_weight
        self.latent_l2_weight = latent_l2_weight
        self.schedule = schedule
        common = dict(
            linear=linear, spline_bins=spline_bins, spline_range=spline_range,
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
        out, logdet = flow_pass(self.outer, x.reshape(x.shape[0], -1))
        return out[:, : self.latent_dim], out[:, self.latent_dim :], logdet

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """g(u) = f⁻¹([u, 0]): a point on the learned manifold, flat (B, D)."""
        pad = u.new_zeros(u.shape[0], self.data_dim - self.latent_dim)
        x, _ = flow_pass(self.outer, torch.cat([u, pad], dim=1), inverse=True)
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
    def objective(self, phase: str) -> objectives.Objective:
        """The objective of a training phase (:mod:`mflow_cli.models.objectives`).

        ``manifold`` and ``density`` are M-flow's two phases; ``joint`` is Me-flow's objective with an encoder,
        else the DNF's (noise or a reconstruction term) or PIE's (neither).
        """
        if phase == "manifold":
            return objectives.manifold_objective
        if phase == "density":
            return objectives.density_objective
        if self.encoder is not None:
            return objectives.me_flow_objective
        if self.noise_std > 0 or self.reconstruction_weight > 0:
            return objectives.dnf_objective
        return objectives.pie_objective

    def loss(self, x: torch.Tensor, phase: str) -> tuple[torch.Tensor, dict[str, float]]:
        """The phase's objective on flat x (B, D); ``alternating`` takes the manifold and density phases in turn."""
        if phase == "alternating":
            phase = "manifold" if self._alternate % 2 == 0 else "density"
            self._alternate += 1
        return self.objective(phase)(self, x.reshape(x.shape[0], -1))

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

