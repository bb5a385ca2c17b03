"""Flows on a VAE's latent variable: planar, radial, Householder and NICE (with a final scaling).

Every step is a function of ``z`` (B, d) and its parameters ``params`` (B, P) or (1, P), so one class
serves both ways of parametrising a flow-VAE posterior:

- static: the parameters are learned globally (:class:`LatentFlow` holds them as one vector);
- dynamic: the encoder outputs them per input (Rezende & Mohamed 2015, sec. 4.1), passed in ``params``.

Each step returns ``(z', log|det ∂z'/∂z|)`` with the log-determinant of shape (B,). nflows has none of
these four as a transform whose parameters can come per input, and a VAE posterior only ever runs them
forward (the inverse of planar/radial has no closed form), so they are written here.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

LatentFlowKind = Literal["none", "planar", "radial", "householder", "nice"]


class FlowStep(nn.Module):
    """One step z -> f(z; params). ``num_params`` is the length of its parameter vector."""

    num_params: int

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def init_params(self) -> torch.Tensor:
        """A parameter vector close to the identity map, for static flows."""
        return 0.01 * torch.randn(self.num_params)

    def forward(self, z: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class PlanarStep(FlowStep):
    """f(z) = z + û tanh(wᵀz + b), log|det| = log|1 + ûᵀψ(z)|, ψ = tanh'(wᵀz + b) w.

    Rezende & Mohamed (2015) eqs. 10–12; û = u + (m(wᵀu) − wᵀu) w/‖w‖² with m(a) = −1 + softplus(a)
    keeps wᵀû ≥ −1, so the map is invertible (their appendix A.1).
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.num_params = 2 * dim + 1

    def init_params(self) -> torch.Tensor:
        """Near the identity: wᵀu = log(e − 1) makes m(wᵀu) = 0, so û = u − (wᵀu) w/‖w‖² is the small part.

        (Small random u, w would give û ≈ −0.31 w/‖w‖², a large shift.)
        """
        w = torch.randn(self.dim) / self.dim**0.5
        u = 0.01 * torch.randn(self.dim) + math.log(math.e - 1) * w / w.pow(2).sum()
        return torch.cat([u, w, torch.zeros(1)])

    def forward(self, z, params):
        d = self.dim
        u, w, b = params[:, :d], params[:, d : 2 * d], params[:, 2 * d]
        wu = (w * u).sum(-1, keepdim=True)
        u_hat = u + (F.softplus(wu) - 1 - wu) * w / (w.pow(2).sum(-1, keepdim=True) + 1e-12)
        a = (w * z).sum(-1) + b
        h = torch.tanh(a)
        psi_u = (1 - h.pow(2)) * (w * u_hat).sum(-1)
        return z + u_hat * h.unsqueeze(-1), torch.log((1 + psi_u).abs() + 1e-12)


class RadialStep(FlowStep):
    """f(z) = z + β h(α, r)(z − z₀), h = 1/(α + r), r = ‖z − z₀‖.

    log|det| = (d − 1) log(1 + βh) + log(1 + βh + βh'(α, r) r) (Rezende & Mohamed 2015, eqs. 14–15);
    α = softplus(α'), β = −α + softplus(β') ≥ −α keeps it invertible (their appendix A.2).
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.num_params = dim + 2

    def forward(self, z, params):
        d = self.dim
        z0, alpha, beta = params[:, :d], F.softplus(params[:, d]), params[:, d + 1]
        beta = -alpha + F.softplus(beta)
        diff = z - z0
        r = diff.norm(dim=-1)
        h = 1.0 / (alpha + r)
        bh = beta * h
        logdet = (d - 1) * torch.log1p(bh) + torch.log1p(bh - beta * r * h.pow(2))
        return z + bh.unsqueeze(-1) * diff, logdet


class HouseholderStep(FlowStep):
    """z' = (I − 2vvᵀ/‖v‖²) z, a reflection: volume-preserving, log|det| = 0 (Tomczak & Welling 2016)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.num_params = dim

    def init_params(self) -> torch.Tensor:
        return torch.randn(self.num_params)  # any v ≠ 0; its length does not matter

    def forward(self, z, params):
        v = params
        coef = 2 * (v * z).sum(-1, keepdim=True) / (v.pow(2).sum(-1, keepdim=True) + 1e-12)
        return z - coef * v, z.new_zeros(z.shape[0])


class NiceStep(FlowStep):
    """Additive coupling z_b' = z_b + m(z_a), z_a' = z_a: volume-preserving (Dinh et al. 2015, eq. 6).

    ``m`` is a one-hidden-layer ReLU net whose weights are the step's parameters, so the same step runs
    static (shared weights) or dynamic (weights from the encoder). Odd steps swap the halves.
    """

    def __init__(self, dim: int, index: int, hidden: int = 64) -> None:
        super().__init__(dim)
        if dim < 2:
            raise ConfigError("NICE coupling needs latent_dim >= 2")
        half = dim // 2
        first, second = torch.arange(half), torch.arange(half, dim)
        a_idx, b_idx = (first, second) if index % 2 == 0 else (second, first)
        self.register_buffer("a_idx", a_idx, persistent=False)
        self.register_buffer("b_idx", b_idx, persistent=False)
        self.hidden = hidden
        self.na, self.nb = len(self.a_idx), len(self.b_idx)
        self.num_params = self.na * hidden + hidden + hidden * self.nb + self.nb

    def init_params(self) -> torch.Tensor:
        w1 = torch.randn(self.na * self.hidden) / self.na**0.5
        w2 = 0.01 / self.hidden**0.5 * torch.randn(self.hidden * self.nb)  # small shift: near the identity
        return torch.cat([w1, torch.zeros(self.hidden), w2, torch.zeros(self.nb)])

    def forward(self, z, params):
        na, nb, hid = self.na, self.nb, self.hidden
        sizes = [na * hid, hid, hid * nb, nb]
        w1, b1, w2, b2 = torch.split(params, sizes, dim=-1)
        za = z[:, self.a_idx]
        hidden = torch.relu(torch.einsum("bi,bih->bh", za, w1.reshape(-1, na, hid).expand(z.shape[0], -1, -1)) + b1)
        shift = torch.einsum("bh,bho->bo", hidden, w2.reshape(-1, hid, nb).expand(z.shape[0], -1, -1)) + b2
        out = z.clone()
        out[:, self.b_idx] = z[:, self.b_idx] + shift
        return out, z.new_zeros(z.shape[0])


class ScalingStep(FlowStep):
    """z' = z ⊙ exp(s), log|det| = Σ s: NICE's final diagonal scaling (Dinh et al. 2015, sec. 3.3)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.num_params = dim

    def init_params(self) -> torch.Tensor:
        return torch.zeros(self.num_params)

    def forward(self, z, params):
        return z * torch.exp(params), params.sum(-1).expand(z.shape[0])


def make_steps(kind: LatentFlowKind, dim: int, length: int, nice_hidden: int = 64) -> list[FlowStep]:
    """The K = ``length`` steps of a flow; NICE gets its scaling step on top (when K > 0)."""
    if kind == "none" or length == 0:
        return []
    if kind == "planar":
        return [PlanarStep(dim) for _ in range(length)]
    if kind == "radial":
        return [RadialStep(dim) for _ in range(length)]
    if kind == "householder":
        return [HouseholderStep(dim) for _ in range(length)]
    if kind == "nice":
        return [NiceStep(dim, k, nice_hidden) for k in range(length)] + [ScalingStep(dim)]
    raise ConfigError(f"unknown latent flow {kind!r}")


class LatentFlow(nn.Module):
    """A chain of K steps. ``dynamic=False`` holds the parameters; ``dynamic=True`` takes them per input.

    ``forward(z, params=None)`` returns ``(z_K, Σ_k log|det ∂z_k/∂z_{k−1}|)``.
    """

    def __init__(
        self, kind: LatentFlowKind, dim: int, length: int, *, dynamic: bool = False, nice_hidden: int = 64
    ) -> None:
        super().__init__()
        self.kind, self.dim, self.length, self.dynamic = kind, dim, length, dynamic
        self.steps = nn.ModuleList(make_steps(kind, dim, length, nice_hidden))
        self.sizes = [s.num_params for s in self.steps]
        self.num_params = sum(self.sizes)
        if not dynamic and self.steps:
            self.params = nn.Parameter(torch.cat([s.init_params() for s in self.steps]))
        else:
            self.register_parameter("params", None)

    def init_params(self) -> torch.Tensor:
        """A vector the dynamic head's bias can start from (near-identity flow)."""
        if not self.steps:
            return torch.zeros(0)
        return torch.cat([s.init_params() for s in self.steps])

    def volume_preserving(self, with_scaling: bool = False) -> bool:
        return self.kind in ("householder", "nice") and (not with_scaling or self.kind == "householder")

    def forward(self, z: torch.Tensor, params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = z.new_zeros(z.shape[0])
        if not self.steps:
            return z, logdet
        if params is None:
            if self.dynamic:
                raise ConfigError("a dynamic latent flow needs params from the encoder")
            params = self.params.unsqueeze(0)
        for step, p in zip(self.steps, torch.split(params, self.sizes, dim=-1), strict=True):
            z, ld = step(z, p)
            logdet = logdet + ld
        return z, logdet
