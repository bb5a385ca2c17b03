"""VQ-Flow: an atlas of normalizing flows whose chart centres a vector-quantized autoencoder learns.

Charts (VQ-Flow paper): a VQ autoencoder gives d_k(x) = ‖E(x) − v_k‖; with d̃_1 ≤ … ≤ d̃_K sorted,
x ∈ U_k when d_k(x) < (1 + ε)·d̃_m(x) (``m``, ``epsilon``). Chart maps g_k = c_k ∘ h_k⁻¹ : R^d -> R^D,
f_k = h_k ∘ c_k† its inverse on the chart: h_k is a RealNVP or MAF flow conditioned on v_k (weights shared
by all charts) and c_k a conformal dimension-raising map conditioned on v_k (an invertible similarity
when d = D). The density (paper eq. 2) is

    p(x) = Σ_{k: x ∈ U_k} p_k · |det(J f_k J f_kᵀ)|^{1/2} · q(f_k(x)),

with learned chart weights p_k = softmax(logits), which start at the charts' share of the training points
when the ``density`` phase begins. For d = D the factor is |det J f_k|, read off the flow; for d < D it is
computed as written, from the (d × D) Jacobian of f_k at x in one batched forward-mode pass of f_k
(:mod:`mflow_cli.jacobian`) or, with ``thin_logdet: conformal``, in closed form (c_k is conformal, so it
is log|det J_h| − d·log s_k). Every (point, member chart) pair is evaluated in one batch; no loops over
samples.

A chart's flow sees only its chart's points. On images that teaches it that pixels never inked in its
chart are constant: the bounded log-scales saturate there (e^6 per pixel over 6 layers), and a test image
with ink in one such pixel goes to |z| in the thousands under every chart (MNIST, 10 charts: 159 to 543
never-inked pixels per chart against 111 for all training images; the worst test image 68,930 bits/dim).
``background_weight: p_0`` > 0 (for d = D) adds a background chart: the standard normal density in the
model's space (its chart map the identity), a member for every point, with the fixed weight p_0 (the charts
share 1 − p_0). The density is then p(x) = p_0 q(x) + (1 − p_0) Σ_{k: x ∈ U_k} p_k …, so no point costs more
than −log p_0 − log q(x), whatever the flows do far from their data. The weight is fixed, not learned: on
MNIST its maximum-likelihood value is about 0.007, and that many background samples (pure noise images)
raise the Fréchet distance of 1,000 samples by about 30; at p_0 = 10⁻⁶ none is drawn in practice, and the
bound costs −log p_0 / (D ln 2) = 0.025 bits/dim more than a learned weight on the few images it catches.

Training has two phases: ``vq`` (the autoencoder and codebook) and ``density`` (the chart flows, conformal
maps and chart weights on −log p(x), with the VQ part fixed). With ``num_charts: 1`` there is no VQ phase
and the model is a classic flow (the baseline recipes ``realnvp_*``, ``maf_*``).

Sampling: k ~ p(k), z ~ q, x = g_k(z), kept where x ∈ U_k (chart k counts nowhere else), which draws
exactly from p / ∫p. A chart's region also ends at its reach (``chart_reach``): (1 + ε) times the largest
distance to its code of a training row in it. Without it a point far from every code is a member of nearly
every chart (the rule is relative), and the charts' flows put mass on such points that no training image
resembles (MNIST: noise images). Inference: p(k|x) ∝ p_k p_k(x) over member charts; stochastic
(k ~ p(k|x), z = f_k(x)) and deterministic (z = Σ_k p(k|x) f_k(x)).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..flows.conditional import FlowKind, LinearKind, conditional_flow
from ..flows.conformal import ConditionalConformalEmbedding
from ..jacobian import batched_jacobian, logdet_gram
from .base import Model, standard_normal_log_prob
from .interfaces import AtlasModel
from .vq_autoencoder import VQAutoencoder

ThinLogdet = Literal["jacobian", "conformal"]


def chart_membership(
    distances: torch.Tensor, m: int, epsilon: float, reach: torch.Tensor | None = None,
    nearest_always: bool = True,
) -> torch.Tensor:
    """Boolean (B, K): d_k(x) < (1 + ε)·d̃_m(x), the m-th smallest distance (paper, "The chart regions"),
    and d_k(x) ≤ R_k, chart k's reach (K,), when given.

    The nearest chart within its reach is always a member (so that ε = 0 or d̃_m = 0 leave x a chart);
    with ``nearest_always`` the nearest chart is a member wherever x is.
    """
    k = distances.shape[1]
    if not 1 <= m <= k:
        raise ConfigError(f"m must be in 1..{k}, got {m}")
    d_m = distances.sort(dim=1).values[:, m - 1 : m]
    nearest = nn.functional.one_hot(distances.argmin(1), k).bool()
    member = (distances < (1 + epsilon) * d_m) | nearest
    if reach is not None:
        member &= distances <= reach
    return member | nearest if nearest_always else member


class VQFlow(Model, AtlasModel):
    r"""K charts, each a context-conditioned flow + conformal map; chart centres from a VQ autoencoder.

    With ``num_charts`` = 1 it is a classic RealNVP or MAF flow (one chart, no VQ phase).

    References:
        | VQ-Flows: Vector Quantized Local Normalizing Flows (Sidheekh et al., 2022)
        | https://arxiv.org/abs/2203.11556

        | Neural Discrete Representation Learning (van den Oord et al., 2017)
        | https://arxiv.org/abs/1711.00937

        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803

        | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        | https://arxiv.org/abs/1705.07057

    Arguments:
        num_charts: The number of charts K (codebook size); 1 makes a classic flow.
        latent_dim: The chart dimension d (default: the data dimension D).
        m: A point belongs to chart k when d_k(x) < (1 + ε) times its m-th smallest code distance.
        epsilon: The chart overlap ε of that rule.
        chart_flow: The chart flow h_k: ``realnvp`` (affine coupling) or ``maf`` (masked affine autoregressive).
        linear: The mixing between flow layers: ``lu`` (permutation + LU-linear) or ``permutation``.
        chart_layers: The number of layers of the chart flow.
        hidden_features: The width of the chart flow's conditioner networks.
        num_blocks: The number of residual blocks (or MADE blocks) per conditioner.
        dropout: The dropout probability of the conditioners.
        num_householder: The number of Householder reflections in each conformal map's rotation.
        thin_logdet: How ½ log det(J_f J_fᵀ) is computed when d < D: ``jacobian`` (batched forward-mode
            Jacobian, paper eq. 2 as written) or ``conformal`` (closed form, log|det J_h| − d log s).
        centre_offset: Whether each chart's conformal map is shifted to its decoded centre D(v_k) (K > 1).
        chart_reach: Whether chart k's region also ends at its reach R_k, (1 + ε) times the largest d_k of the
            training rows in it when the ``density`` phase starts (points beyond every reach belong to the
            background chart only, or to their nearest chart without one); off: the paper's rule alone.
        background_weight: The fixed weight p_0 of a background chart (the standard normal in the model's
            space, a member for every point), which bounds the cost of points far from every chart's
            training data; 0 for none; needs latent_dim equal to the data dimension.
        code_dim: The dimension of the VQ codes v_k (the chart flows' context).
        vq_hidden_features: The width of the VQ autoencoder's hidden layers.
        vq_hidden_layers: The number of hidden layers of the VQ encoder and decoder.
        commitment: The weight β of the VQ commitment loss.
        restart_threshold: A code whose usage EMA falls below this fraction of 1/K is restarted.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_charts: int = 8,
        latent_dim: int | None = None,
        m: int = 1,
        epsilon: float = 0.2,
        chart_flow: FlowKind = "realnvp",
        linear: LinearKind = "lu",
        chart_layers: int = 6,
        hidden_features: int = 64,
        num_blocks: int = 2,
        dropout: float = 0.0,
        num_householder: int = 2,
        thin_logdet: ThinLogdet = "jacobian",
        centre_offset: bool = True,
        chart_reach: bool = True,
        background_weight: float = 0.0,
        code_dim: int = 2,
        vq_hidden_features: int = 64,
        vq_hidden_layers: int = 2,
        commitment: float = 0.25,
        restart_threshold: float = 0.03,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.data_dim = int(torch.Size(self.data_shape).numel())
        self.latent_dim = self.data_dim if latent_dim is None else latent_dim
        if not 1 <= self.latent_dim <= self.data_dim:
            raise ConfigError(f"latent_dim must be in 1..{self.data_dim}, got {self.latent_dim}")
        if num_charts < 1:
            raise ConfigError(f"num_charts must be >= 1, got {num_charts}")
        self.num_charts, self.m, self.epsilon = num_charts, min(m, num_charts), epsilon
        self.thin_logdet, self.centre_offset = thin_logdet, centre_offset and num_charts > 1
        self.vq = VQAutoencoder(
            self.data_dim, num_charts, code_dim=code_dim, hidden_features=vq_hidden_features,
            hidden_layers=vq_hidden_layers, commitment=commitment, restart_threshold=restart_threshold,
        )
        self.flow = conditional_flow(
            self.latent_dim, chart_layers, code_dim, kind=chart_flow, linear=linear, hidden_features=hidden_features,
            num_blocks=num_blocks, dropout=dropout,
        )
        self.conformal = ConditionalConformalEmbedding(self.latent_dim, self.data_dim, code_dim, num_householder)
        self.chart_logits = nn.Parameter(torch.zeros(num_charts))
        self.chart_reach = chart_reach
        self.register_buffer("reach", self.unlimited_reach())  # R_k, set when the density phase starts
        if not 0.0 <= background_weight < 1.0:
            raise ConfigError(f"background_weight must be in [0, 1), got {background_weight}")
        if background_weight > 0 and self.latent_dim != self.data_dim:
            raise ConfigError(f"a background chart (background_weight > 0) needs latent_dim equal to the data "
                              f"dimension {self.data_dim}, got {self.latent_dim}")
        self.background_weight = background_weight

    # ------------------------------------------------------------------ phases
    @classmethod
    def phase_names(cls, **config) -> list[str]:
        num_charts = config.get("num_charts", inspect.signature(cls).parameters["num_charts"].default)
        return ["vq", "density"] if num_charts > 1 else ["density"]

    def phases(self) -> list[str]:
        return self.phase_names(num_charts=self.num_charts)

    def phase_parameters(self, phase: str):
        if phase == "vq":
            return self.vq.parameters()
        return [*self.flow.parameters(), *self.conformal.parameters(), self.chart_logits]

    @torch.no_grad()
    def start_phase(self, phase: str, training_rows: Callable[[int], torch.Tensor]) -> None:
        """Before the ``density`` phase: p_k from the charts' share of (up to 10,000) training rows, and each
        chart's reach R_k = (1 + ε) max d_k(x) over those rows in it (the paper's rule).

        A row in several charts counts 1/(its number of charts) for each. Learned from equal logits
        instead, the weights barely move in a few epochs (MNIST: a chart of 12 training images kept
        p_k ≈ 0.1, so one sample in ten came from it).

        The reach keeps a chart's region where its flow has seen data. The paper's rule alone is relative:
        a point far from every code (|E(x) − v_k| ≈ 66 against at most 21 for any MNIST training or test
        image) is within (1 + ε) of its nearest distance for nearly every chart, so it is a member of all
        of them and each chart's flow extrapolates mass to it: noise images, 9 % of the samples of a
        VQ-RealNVP on MNIST, with a higher log-density than the digits.
        """
        if phase != "density" or self.num_charts == 1:
            return
        rows = training_rows(10_000)
        distances = self.vq.distances(rows.reshape(len(rows), -1))
        members = chart_membership(distances, self.m, self.epsilon)
        weights = members.to(self.chart_logits.dtype)
        share = (weights / weights.sum(1, keepdim=True)).mean(0)
        self.chart_logits.copy_(torch.log(share.clamp_min(1e-4)))
        farthest = torch.where(members, distances, torch.zeros_like(distances)).amax(0)
        self.reach.copy_((1 + self.epsilon) * farthest)

    def unlimited_reach(self) -> torch.Tensor:
        """R_k before the density phase: the largest float32 (finite: model files refuse inf), the paper's rule."""
        return torch.full((self.num_charts,), torch.finfo(torch.float32).max)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved before the reach existed load without one (the paper's rule alone)
        state_dict.setdefault(prefix + "reach", self.unlimited_reach())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ charts
    def _log_weights(self) -> torch.Tensor:
        """log p_k (K,), then log p_0 of the background chart when there is one (K + 1,)."""
        log_p = torch.log_softmax(self.chart_logits, 0)
        if not self.background_weight:
            return log_p
        log_p0 = log_p.new_tensor([math.log(self.background_weight)])
        return torch.cat([log_p + math.log1p(-self.background_weight), log_p0])

    def log_chart_weights(self) -> torch.Tensor:
        """log p_k (K,) (with a background chart they sum to 1 − p_0)."""
        return self._log_weights()[: self.num_charts]

    def background_log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log p_0 + log q(x) (B,) of the background chart, −inf without one."""
        if not self.background_weight:
            return x.new_full((x.shape[0],), float("-inf"))
        return math.log(self.background_weight) + standard_normal_log_prob(x.reshape(x.shape[0], -1))

    def membership(self, x: torch.Tensor) -> torch.Tensor:
        """x ∈ U_k as a boolean (B, K) (for K = 1: every x is in the one chart)."""
        if self.num_charts == 1:
            return torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
        with torch.no_grad():
            return chart_membership(self.vq.distances(x), self.m, self.epsilon,
                                    self.reach if self.chart_reach else None,
                                    nearest_always=not self.background_weight)

    def _chart_inputs(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        context = self.vq.codebook.detach()[k]
        offset = self.vq.centres().detach()[k] if self.centre_offset else None
        return context, offset

    def generate(self, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """g_k(z) = c_k(h_k⁻¹(z)) for rows z (P, d) with chart indices k (P,): points (P, D)."""
        context, offset = self._chart_inputs(k)
        u, _ = self.flow.inverse(z, context=context)
        return self.conformal(u, context, offset)[0]

    def chart_log_density(self, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = f_k(x) (P, d) and log |det(J f_k J f_kᵀ)|^{1/2} q(f_k(x)) (P,) for pairs of rows x (P, D), k (P,)."""
        context, offset = self._chart_inputs(k)
        u, half_logdet_c = self.conformal.project(x, context, offset)
        z, logdet_h = self.flow(u, context=context)
        if self.latent_dim < self.data_dim and self.thin_logdet == "jacobian":
            # paper eq. 2 as written: ½ log det(J_f J_fᵀ) from the (d × D) Jacobian of f_k at x
            ctx_rep = context.repeat_interleave(self.data_dim, 0)
            off_rep = None if offset is None else offset.repeat_interleave(self.data_dim, 0)

            def f(xx: torch.Tensor) -> torch.Tensor:
                return self.flow(self.conformal.project(xx, ctx_rep, off_rep)[0], context=ctx_rep)[0]

            _, jac = batched_jacobian(f, x)  # (P, d, D)
            log_vol = 0.5 * logdet_gram(jac.transpose(1, 2))
        else:  # |det J f| = |det J h| / s^d (d = D), or the conformal closed form (d < D)
            log_vol = logdet_h - half_logdet_c
        return z, standard_normal_log_prob(z) + log_vol

    def chart_table(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p_k + log p_k(x) as (B, K), −inf where x ∉ U_k; with the member pairs (b, k) and their z."""
        x = x.reshape(x.shape[0], -1)
        b, k = self.membership(x).nonzero(as_tuple=True)
        z, log_pk = self.chart_log_density(x[b], k)
        table = x.new_full((x.shape[0], self.num_charts), float("-inf"))
        table = table.index_put((b, k), log_pk + self.log_chart_weights()[k])
        return table, b, k, z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) (B,), paper eq. 2 (plus the background chart's p_0 q(x) when there is one)."""
        return self._log_total(x, self.chart_table(x)[0])

    def _log_total(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        if not self.background_weight:
            return torch.logsumexp(table, dim=1)
        return torch.logsumexp(torch.cat([table, self.background_log_density(x)[:, None]], 1), dim=1)

    # ------------------------------------------------------------------ training
    def loss(self, x: torch.Tensor, phase: str) -> tuple[torch.Tensor, dict[str, float]]:
        r"""The phase's objective, averaged over the batch.

        ``vq``: the VQ autoencoder's loss (:meth:`VQAutoencoder.loss`); ``density``: the negative atlas
        log-likelihood (paper eq. 2) −log Σ_{k: x ∈ U_k} p_k |det(J f_k J f_kᵀ)|^{1/2} q(f_k(x)).
        """
        x = x.reshape(x.shape[0], -1)
        if phase == "vq":
            return self.vq.loss(x)
        nll = -self.log_prob(x).mean()
        return nll, {"nll": nll.item()}

    # ------------------------------------------------------------------ inference
    def _device(self) -> torch.device:
        return self.chart_logits.device

    def propose(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k ~ p(k), z ~ q, x = g_k(z): x (n, D), k (n,), z (n, d), wherever x falls; k = K marks the background
        chart (x = z)."""
        k = torch.multinomial(self._log_weights().exp(), n, replacement=True)
        z = torch.randn(n, self.latent_dim, device=self._device(), dtype=self.chart_logits.dtype)
        if not self.background_weight:
            return self.generate(z, k), k, z
        charted = k < self.num_charts
        x = z.clone()  # the background chart's samples are z itself (d = D)
        x[charted] = self.generate(z[charted], k[charted])
        return x, k, z

    def in_own_chart(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Boolean (n,): x ∈ U_k for proposals x (n, D) from charts k (n,) (the background chart: always)."""
        member = torch.cat([self.membership(x), torch.ones_like(k[:, None], dtype=torch.bool)], 1)
        return member[torch.arange(len(k), device=x.device), k]

    MAX_PROPOSAL_ROUNDS = 50

    def sample_charts(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n samples of the atlas density (normalised): proposals of :meth:`propose` kept where x ∈ U_k.

        Chart k counts only on U_k, so a proposal outside it is not a sample of p(x) = Σ_k p_k 1[x ∈ U_k] p_k(x)
        (+ p_0 q(x)); keeping the others draws exactly from p / ∫p (rejection sampling; the acceptance rate is
        the atlas mass). Rounds of proposals, each sized by the acceptance so far; with one chart every
        proposal is kept. Returns x (n, D), k (n,), z (n, d) as :meth:`propose`.
        """
        kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        proposed = accepted = 0
        for _ in range(self.MAX_PROPOSAL_ROUNDS):
            if accepted >= n:
                break
            count = n if accepted == 0 else math.ceil(1.1 * (n - accepted) * proposed / accepted)
            x, k, z = self.propose(min(count, 10 * n))
            keep = self.in_own_chart(x, k)
            proposed, accepted = proposed + len(k), accepted + int(keep.sum())
            kept.append((x[keep], k[keep], z[keep]))
        if accepted < n:
            raise RuntimeError(f"the atlas kept {accepted} of {proposed} proposals (atlas mass about "
                               f"{accepted / proposed:.1e}): too few to draw {n} samples")
        x, k, z = (torch.cat(parts)[:n] for parts in zip(*kept, strict=True))
        return x, k, z

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.sample_charts(n)[0].reshape(n, *self.data_shape)

    @torch.no_grad()
    def chart_mass(self, n: int) -> float:
        """Monte-Carlo estimate of ∫ p(x) dx = Σ_k p_k P_z(g_k(z) ∈ U_k) (at most 1; 1 when charts cover).

        One chart covers everything: then it is 1 exactly, without sampling.
        """
        if self.num_charts == 1:
            return 1.0
        x, k, _ = self.propose(n)
        return float(self.in_own_chart(x, k).float().mean())

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Chart posterior p(k|x), the MAP and a sampled chart, deterministic and stochastic latents.

        With a background chart, column K of the posterior is p(background|x) (its latent is x itself) and
        a chart index K means the background chart.
        """
        with torch.no_grad():
            flat = x.reshape(x.shape[0], -1)
            table, b, k, z = self.chart_table(flat)
            z_all = z.new_zeros(x.shape[0], self.num_charts, self.latent_dim).index_put((b, k), z)
            if self.background_weight:
                table = torch.cat([table, self.background_log_density(flat)[:, None]], 1)
                z_all = torch.cat([z_all, flat[:, None, :]], 1)
            log_p = torch.logsumexp(table, dim=1)
            post = torch.exp(table - log_p[:, None])
            post = torch.where(torch.isfinite(post), post, torch.zeros_like(post))
            sampled = torch.multinomial(post.clamp_min(0) + 1e-30 * (post.sum(1, keepdim=True) == 0), 1)[:, 0]
            rows = torch.arange(x.shape[0], device=x.device)
            return {
                "latents": (post[:, :, None] * z_all).sum(1),
                "latents_stochastic": z_all[rows, sampled],
                "chart": sampled.float(),
                "chart_map": post.argmax(1).float(),
                "chart_posterior": post,
                "log_prob": log_p,
            }
