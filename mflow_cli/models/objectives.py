r"""The training objectives of the manifold flows, one function per objective.

Each takes a :class:`~mflow_cli.models.manifold_flow.ManifoldFlow` and a clean batch ``x`` (B, D) and returns
``(loss, logs)``: the scalar to minimise and the float terms to log. Notation: the outer flow f maps x to
``[u, v]`` (u: d manifold coordinates, v: D − d off-manifold ones), the decoder is g(u) = f⁻¹([u, 0]), the inner
flow h models the density of u, β is ``reconstruction_weight`` and σ is ``noise_std``. Which objective a model
trains in which phase follows from its configuration (:meth:`ManifoldFlow.objective`).

References:
    | Flows for simultaneous manifold learning and density estimation (Brehmer & Cranmer, 2020)
    | https://arxiv.org/abs/2003.13913
    | Denoising Normalizing Flow (Horvat & Pfister, NeurIPS 2021)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..jacobian import batched_jacobian, logdet_gram
from .base import standard_normal_log_prob

if TYPE_CHECKING:
    from .manifold_flow import ManifoldFlow

Objective = Callable[["ManifoldFlow", torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def _inflate(model: ManifoldFlow, x: torch.Tensor) -> torch.Tensor:
    """x̃ = x + σ ε, ε ~ N(0, I): the DNF's Gaussian inflation (the identity when σ = 0)."""
    return x + model.noise_std * torch.randn_like(x) if model.noise_std > 0 else x


def _latent_penalty(model: ManifoldFlow, latents: torch.Tensor) -> torch.Tensor:
    """λ E‖[u, v]‖²: the research code's ``uvl2reg`` on the outer flow's output (0 unless ``latent_l2_weight``)."""
    if model.latent_l2_weight > 0:
        return model.latent_l2_weight * latents.pow(2).sum(-1).mean()
    return latents.new_zeros(())


def _ambient_nll(model: ManifoldFlow, u: torch.Tensor, v: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """−log p(x) in R^D: −[log q(h(u)) + log|det J_h| + log N(v; 0, s²I) + log|det J_f|], batch mean."""
    return -(model.latent_log_prob(u) + standard_normal_log_prob(v, model.off_manifold_std) + logdet).mean()


def dnf_objective(model: ManifoldFlow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Denoising Normalizing Flow: the ambient NLL of the inflated data plus the denoising reconstruction,

    .. math:: L = -\log p(\tilde x) + \beta \, \| x - g(u(\tilde x)) \|^2, \qquad \tilde x = x + \sigma \epsilon

    (Horvat & Pfister 2021, the DNF loss): the NLL is taken on x̃, the squared error against the clean x. With
    σ = 0 and β = 0 it is PIE's objective (:func:`pie_objective`).
    """
    noisy = _inflate(model, x)
    u, v, logdet = model.project(noisy)
    loss, logs = x.new_zeros(()), {}
    if model.reconstruction_weight > 0 and model.latent_dim < model.data_dim:
        mse = F.mse_loss(model.decode(u), x)
        loss, logs["mse"] = loss + model.reconstruction_weight * mse, mse.item()
    nll = _ambient_nll(model, u, v, logdet)
    loss, logs["nll"] = loss + model.nll_weight * nll, nll.item()
    return loss + _latent_penalty(model, torch.cat([u, v], 1)), logs


def pie_objective(model: ManifoldFlow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    r"""PIE (and the plain ambient flow, d = D): maximum likelihood in R^D,

    .. math:: L = -\log q(h(u)) - \log|\det J_h| - \log \mathcal N(v; 0, s^2 I) - \log|\det J_f|

    with a narrow off-manifold Gaussian of std s (``off_manifold_std``) (Brehmer & Cranmer 2020, PIE).
    """
    u, v, logdet = model.project(_inflate(model, x))
    nll = _ambient_nll(model, u, v, logdet)
    return model.nll_weight * nll + _latent_penalty(model, torch.cat([u, v], 1)), {"nll": nll.item()}


def manifold_objective(model: ManifoldFlow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    r"""M-flow's manifold phase: the reconstruction error of the projection onto the learned manifold,

    .. math:: L = \beta \, \| x - g(u(\tilde x)) \|^2

    with u from the outer flow (M-flow) or the encoder e(x) (Me-flow). Only the outer flow (and the encoder)
    train in this phase (Brehmer & Cranmer 2020, sequential training).
    """
    noisy = _inflate(model, x)
    if model.encoder is not None:
        latents = u = model.encoder(noisy)
    else:
        u, v, _ = model.project(noisy)
        latents = torch.cat([u, v], 1)
    mse = F.mse_loss(model.decode(u), x)
    return x.new_zeros(()) + model.reconstruction_weight * mse + _latent_penalty(model, latents), {"mse": mse.item()}


def density_objective(model: ManifoldFlow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    r"""M-flow's density phase: maximum likelihood of the inner flow on the fixed manifold coordinates,

    .. math:: L = -\log q(h(u)) - \log|\det J_h|, \qquad u = u(x) \text{ held fixed}

    (the on-manifold likelihood without its Gram term, which does not depend on h; Brehmer & Cranmer 2020).
    """
    with torch.no_grad():
        u = model.manifold_coordinates(_inflate(model, x))
    nll = -model.latent_log_prob(u).mean()
    return model.nll_weight * nll, {"nll_latent": nll.item()}


def me_flow_objective(model: ManifoldFlow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Me-flow, trained jointly: reconstruction through the encoder plus the exact on-manifold NLL,

    .. math:: L = \beta \, \| x - g(e(x)) \|^2 - \log q(h(u)) - \log|\det J_h|
              + \tfrac12 \log\det(J_g^\top J_g), \qquad u = e(x)

    (the M-flow density on the manifold, Brehmer & Cranmer 2020, with J_g from one batched forward-mode pass).
    """
    u = model.encoder(_inflate(model, x))
    recon, jac = batched_jacobian(model.decode, u)
    nll = -(model.latent_log_prob(u) - 0.5 * logdet_gram(jac)).mean()
    loss, logs = x.new_zeros(()), {}
    if model.reconstruction_weight > 0:
        mse = F.mse_loss(recon, x)
        loss, logs["mse"] = loss + model.reconstruction_weight * mse, mse.item()
    loss, logs["nll"] = loss + model.nll_weight * nll, nll.item()
    return loss + _latent_penalty(model, u), logs
