"""Flows on a VAE's latent variable: planar, radial, Householder, NICE (with a final scaling), IAF and Sylvester.

Every step is a function of ``z`` (…, B, d), its parameters ``params`` (B, P) or (1, P) and the encoder's
context ``context`` (B, H), so one class serves every way of parametrising a flow-VAE posterior:

- static: the parameters are learned globally (:class:`LatentFlow` holds them as one vector);
- dynamic (amortised): the encoder outputs them per input (Rezende & Mohamed 2015, sec. 4.1), passed in
  ``params``; the Sylvester steps are always amortised, as in van den Berg et al. (2018);
- context: the IAF steps hold their MADE weights and read the encoder's hidden state h per input
  (Kingma et al. 2016), passed in ``context``.

Each step returns ``(z', log|det ∂z'/∂z|)`` with the log-determinant of shape (…, B). The leading dimensions
of ``z`` (a VAE's S posterior draws of each of B inputs) broadcast against the per-input parameters and
context, so an amortised flow's per-input work (a Sylvester step's orthonormal Q, a MADE's context term) is done
once per input, not once per draw. nflows has none of
these as a transform whose parameters can come per input, and a VAE posterior only ever runs them
forward (the inverse of planar/radial/Sylvester has no closed form), so they are written here.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from nflows.transforms.made import MADE
from torch import nn

from .. import kernels
from ..errors import ConfigError

LatentFlowKind = Literal[
    "none", "planar", "radial", "householder", "nice", "iaf", "sylvester_orthogonal", "sylvester_householder",
    "sylvester_triangular",
]
SylvesterKind = Literal["orthogonal", "householder", "triangular"]
AMORTISED_KINDS = ("sylvester_orthogonal", "sylvester_householder", "sylvester_triangular")


def per_input_matmul(z: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """z (…, B, d) times each input's own matrix (B, d, m), or one shared matrix (1, d, m): (…, B, m).

    The draws (the leading dims) of an input share its matrix: one batched matmul over the B inputs, never a
    copy of the matrix per draw (which ``z.unsqueeze(-2) @ matrices`` broadcasting would make).
    """
    if matrices.shape[0] == 1:
        return z @ matrices[0]
    batch, dim = z.shape[-2:]
    rows = z.reshape(-1, batch, dim).transpose(0, 1)  # (B, S, d)
    return (rows @ matrices).transpose(0, 1).reshape(*z.shape[:-1], matrices.shape[-1])


def householder_reflect(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(I − 2vvᵀ/‖v‖²) y over the last dim (broadcasting), the reflection of Tomczak & Welling (2016), eq. 6."""
    return y - 2 * ((y * v).sum(-1, keepdim=True) / (v.pow(2).sum(-1, keepdim=True) + 1e-12)) * v


def householder_product(y: torch.Tensor, vectors: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """Q y (or Qᵀ y) over the last dim, Q = H_1 ⋯ H_J from reflection vectors (…, J, D) that broadcast with y."""
    count = vectors.shape[-2]
    for j in range(count) if transpose else reversed(range(count)):
        y = householder_reflect(y, vectors[..., j, :])
    return y


def householder_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Q = H_1 ⋯ H_J (B, D, D) from reflection vectors (B, J, D), H_j = I − 2 v_j v_jᵀ/‖v_j‖².

    The same product as :func:`householder_product` applied to the unit vectors, in the compact "UT" form
    Q = I − V S⁻¹ Vᵀ, V = [v_1 … v_J], S = ½ diag(VᵀV) + the strict upper triangle of VᵀV (Joffrain et al.,
    2006): three batched products and one triangular solve instead of J passes over a (B, D, D) tensor.

    References:
        | Accumulating Householder Transformations, Revisited (Joffrain, Low, Quintana-Ortí & van de Geijn, 2006)
        | https://doi.org/10.1145/1141885.1141886
    """
    gram = vectors @ vectors.transpose(1, 2)
    s = gram.triu(1) + torch.diag_embed((gram.diagonal(dim1=1, dim2=2) + 1e-12) / 2)
    eye = torch.eye(vectors.shape[-1], dtype=vectors.dtype, device=vectors.device)
    return eye - vectors.transpose(1, 2) @ torch.linalg.solve_triangular(s, vectors, upper=True)


class PolarFactor(torch.autograd.Function):
    r"""U = Q (QᵀQ)^{-1/2}, the orthonormal polar factor of Q (B, d, M), M ≤ d, with its exact gradient.

    Forward: the eigendecomposition QᵀQ = V Λ Vᵀ (:func:`mflow_cli.kernels.symmetric_eigh` for small M on the
    CPU, else :func:`torch.linalg.eigh`) gives P = (QᵀQ)^{1/2} = V Λ^{1/2} Vᵀ and U = Q P⁻¹; the
    Björck–Bowie step U ← U (I + ½(I − UᵀU)), each of which squares ‖UᵀU − I‖, then mends what rounding left
    (about cond(Q)² · eps; none or one step for a well-conditioned Q, a few at cond(Q) = 1e3 in float32) until
    ‖UᵀU − I‖_max < 100 eps. This is the limit the iterative procedure of van den Berg et al. (2018, eq. 20)
    converges to from Q/‖Q‖_F, in one decomposition instead of the ten or more iterations autograd would
    otherwise differentiate one by one.

    Backward: from Q = U P with UᵀU = I, dU = U Ω + (I − UUᵀ) dQ P⁻¹ with the skew Ω solving
    P Ω + Ω P = UᵀdQ − dQᵀU, so for an output gradient G,

    .. math:: ∂L/∂Q = (I − UUᵀ) G P⁻¹ + U (Y − Yᵀ),  P Y + Y P = UᵀG,

    and in the eigenbasis of P that Sylvester equation is the entrywise division Ŷ_ij = (VᵀUᵀGV)_ij / (s_i + s_j),
    s = Λ^{1/2} > 0: no division by eigenvalue gaps, so repeated singular values are harmless.

    On the CPU with M ≤ :data:`mflow_cli.kernels.ops.SYMMETRIC_EIGH_MAX_SIZE`, forward and backward each run as
    one native call (:func:`mflow_cli.kernels.polar_factor`), the same steps per matrix, each matrix refined
    until it alone meets the tolerance; elsewhere, the PyTorch ops below.

    References:
        | Functions of Matrices: Theory and Computation (Higham, 2008), ch. 8 (the polar decomposition)
        | Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018)
        | https://arxiv.org/abs/1803.05649
    """

    MAX_REFINEMENTS = 8

    @staticmethod
    def forward(ctx, q: torch.Tensor) -> torch.Tensor:
        native = kernels.polar_factor(q)
        if native is not None:  # the same steps in one call (csrc/polar_factor.cpp)
            ctx.save_for_backward(*native)
            return native[0]
        gram = q.transpose(1, 2) @ q
        eigenvalues, basis = kernels.symmetric_eigh(gram) or torch.linalg.eigh(gram)
        floor = eigenvalues[:, -1:].clamp_min(torch.finfo(q.dtype).tiny) * torch.finfo(q.dtype).eps
        roots = eigenvalues.clamp_min(floor).sqrt()  # s, the singular values of Q
        p_inverse = (basis / roots[:, None, :]) @ basis.transpose(1, 2)
        u = q @ p_inverse
        eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
        tolerance = 100 * torch.finfo(q.dtype).eps
        for _ in range(PolarFactor.MAX_REFINEMENTS):
            residual = eye - u.transpose(1, 2) @ u
            if residual.abs().amax() < tolerance:
                break
            u = u + 0.5 * u @ residual
        ctx.save_for_backward(u, basis, roots, p_inverse)
        return u

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor) -> torch.Tensor:
        u, basis, roots, p_inverse = ctx.saved_tensors
        native = kernels.polar_factor_backward(grad_u, u, basis, roots, p_inverse)
        if native is not None:
            return native
        ut_g = u.transpose(1, 2) @ grad_u
        y_hat = basis.transpose(1, 2) @ ut_g @ basis / (roots[:, :, None] + roots[:, None, :])
        y = basis @ y_hat @ basis.transpose(1, 2)
        return (grad_u - u @ ut_g) @ p_inverse + u @ (y - y.transpose(1, 2))


def planar_u_hat(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """û = u + (m(wᵀu) − wᵀu) w/‖w‖², m(a) = −1 + softplus(a), over the last dim: wᵀû ≥ −1, so the planar map is
    invertible (Rezende & Mohamed 2015, appendix A.1)."""
    wu = (w * u).sum(-1, keepdim=True)
    return u + (F.softplus(wu) - 1 - wu) * w / (w.pow(2).sum(-1, keepdim=True) + 1e-12)


class FlowStep(nn.Module):
    """One step z -> f(z; params, context). ``num_params`` is the length of its per-input parameter vector.

    Arguments:
        dim: The latent dimension d.
    """

    num_params: int

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    @property
    def size_note(self) -> str:
        """What sizes the step beyond d, for labels (``, M = 20``); empty for most kinds."""
        return ""

    def init_params(self) -> torch.Tensor:
        """A parameter vector close to the identity map, for static flows."""
        return 0.01 * torch.randn(self.num_params)

    def forward(
        self, z: torch.Tensor, params: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z' (…, B, d) and log|det ∂z'/∂z| (…, B) for z (…, B, d), parameters (B or 1, P), context (B, H)."""
        raise NotImplementedError


class PlanarStep(FlowStep):
    """f(z) = z + û tanh(wᵀz + b), log|det| = log|1 + ûᵀψ(z)|, ψ = tanh'(wᵀz + b) w.

    Rezende & Mohamed (2015) eqs. 10–12; û = u + (m(wᵀu) − wᵀu) w/‖w‖² with m(a) = −1 + softplus(a)
    keeps wᵀû ≥ −1, so the map is invertible (their appendix A.1).

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770

    Arguments:
        dim: The latent dimension d.
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

    def forward(self, z, params, context=None):
        d = self.dim
        u, w, b = params[:, :d], params[:, d : 2 * d], params[:, 2 * d]
        u_hat = planar_u_hat(u, w)  # (B or 1, ·): per input, broadcast over the draws
        a = (w * z).sum(-1) + b
        h = torch.tanh(a)
        psi_u = (1 - h.pow(2)) * (w * u_hat).sum(-1)
        return z + u_hat * h.unsqueeze(-1), torch.log((1 + psi_u).abs() + 1e-12)

    @staticmethod
    def chain(z: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """K planar steps at once: ``params`` (B or 1, K, 2d + 1), each step's (u, w, b) as :meth:`forward` reads
        them. One native call with a compiled backward (:func:`mflow_cli.kernels.planar_chain`) instead of a dozen
        small ops per step; None where that path does not apply (the caller then runs the steps one by one)."""
        return kernels.planar_chain(z, params)


class RadialStep(FlowStep):
    """f(z) = z + β h(α, r)(z − z₀), h = 1/(α + r), r = ‖z − z₀‖.

    log|det| = (d − 1) log(1 + βh) + log(1 + βh + βh'(α, r) r) (Rezende & Mohamed 2015, eqs. 14–15);
    α = softplus(α'), β = −α + softplus(β') ≥ −α keeps it invertible (their appendix A.2).

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770

    Arguments:
        dim: The latent dimension d.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.num_params = dim + 2

    def forward(self, z, params, context=None):
        d = self.dim
        z0, alpha, beta = params[:, :d], F.softplus(params[:, d]), params[:, d + 1]  # (B or 1, ·)
        beta = -alpha + F.softplus(beta)
        diff = z - z0
        r = diff.norm(dim=-1)
        h = 1.0 / (alpha + r)
        bh = beta * h
        logdet = (d - 1) * torch.log1p(bh) + torch.log1p(bh - beta * r * h.pow(2))
        return z + bh.unsqueeze(-1) * diff, logdet


class HouseholderStep(FlowStep):
    """z' = (I − 2vvᵀ/‖v‖²) z, a reflection: volume-preserving, log|det| = 0 (Tomczak & Welling 2016, eq. 6).

    References:
        | Improving Variational Auto-Encoders using Householder Flow (Tomczak & Welling, 2016)
        | https://arxiv.org/abs/1611.09630

    Arguments:
        dim: The latent dimension d.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.num_params = dim

    def init_params(self) -> torch.Tensor:
        return torch.randn(self.num_params)  # any v ≠ 0; its length does not matter

    def forward(self, z, params, context=None):
        return householder_reflect(z, params), z.new_zeros(z.shape[:-1])


class NiceStep(FlowStep):
    """Additive coupling z_b' = z_b + m(z_a), z_a' = z_a: volume-preserving (Dinh et al. 2014, eq. 6).

    ``m`` is a one-hidden-layer ReLU net whose weights are the step's parameters, so the same step runs
    static (shared weights) or dynamic (weights from the encoder). Odd steps swap the halves.

    References:
        | NICE: Non-linear Independent Components Estimation (Dinh et al., 2014)
        | https://arxiv.org/abs/1410.8516

    Arguments:
        dim: The latent dimension d (at least 2).
        index: The step's position; odd steps update the first half instead of the second.
        hidden: The width of the coupling network m.
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

    def forward(self, z, params, context=None):
        na, nb, hid = self.na, self.nb, self.hidden
        sizes = [na * hid, hid, hid * nb, nb]
        w1, b1, w2, b2 = torch.split(params, sizes, dim=-1)
        hidden = torch.relu(per_input_matmul(z[..., self.a_idx], w1.reshape(-1, na, hid)) + b1)
        shift = per_input_matmul(hidden, w2.reshape(-1, hid, nb)) + b2
        out = z.clone()
        out[..., self.b_idx] = z[..., self.b_idx] + shift
        return out, z.new_zeros(z.shape[:-1])


class ScalingStep(FlowStep):
    """z' = z ⊙ exp(s), log|det| = Σ s: NICE's final diagonal scaling (Dinh et al. 2014, sec. 3.3).

    References:
        | NICE: Non-linear Independent Components Estimation (Dinh et al., 2014)
        | https://arxiv.org/abs/1410.8516

    Arguments:
        dim: The latent dimension d.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.num_params = dim

    def init_params(self) -> torch.Tensor:
        return torch.zeros(self.num_params)

    def forward(self, z, params, context=None):
        return z * torch.exp(params), params.sum(-1).expand(z.shape[:-1])


class IAFStep(FlowStep):
    r"""Inverse autoregressive step z' = σ ⊙ z + (1 − σ) ⊙ m, [m, s] = MADE(z, h), σ = sigmoid(s).

    Kingma et al. (2016), eqs. 11–14 and Algorithm 1: m_i and s_i depend on z_{<i} and on the encoder's
    context h only, so ∂z'/∂z is triangular with diagonal σ and log|det| = Σ_i log σ_i. The MADE weights are
    the step's own (global) parameters; the input enters through h, so ``num_params`` is 0. ``reverse``
    flips the variable order (IAF reverses it between steps). The bias of s starts at +2 (σ ≈ 0.88, the
    paper's "forget gate" initialisation) and the output weights at 0, so a step starts as a mild contraction.

    References:
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        | https://arxiv.org/abs/1606.04934

    Arguments:
        dim: The latent dimension d.
        context_features: The width H of the encoder context h (0: no context).
        hidden: The width of the MADE's hidden layers.
        reverse: Whether this step orders the variables d, …, 1.
    """

    def __init__(self, dim: int, context_features: int, hidden: int = 64, reverse: bool = False) -> None:
        super().__init__(dim)
        if hidden < 1:
            raise ConfigError(f"iaf_hidden must be >= 1, got {hidden}")
        self.num_params, self.reverse, self.context_features = 0, reverse, context_features
        self.made = MADE(dim, hidden, context_features=context_features or None, num_blocks=1, output_multiplier=2,
                         use_residual_blocks=False)
        with torch.no_grad():
            self.made.final_layer.weight.zero_()
            self.made.final_layer.bias.copy_(torch.tensor([0.0, 2.0]).repeat(dim))  # interleaved (m_i, s_i)

    def shift_and_gate(self, z: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """m (…, B, d) and log σ (…, B, d) at z, in z's own order."""
        inputs = z.flip(-1) if self.reverse else z
        out = self.made(inputs, context if self.context_features else None).reshape(*z.shape, 2)
        m, s = out[..., 0], out[..., 1]
        if self.reverse:
            m, s = m.flip(-1), s.flip(-1)
        return m, F.logsigmoid(s)

    def forward(self, z, params, context=None):
        m, log_sigma = self.shift_and_gate(z, context)
        sigma = log_sigma.exp()
        return sigma * z + (1 - sigma) * m, log_sigma.sum(-1)

    def inverse(self, z_out: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """z with f(z) = z_out, solved variable by variable (d MADE passes: the step is autoregressive)."""
        z = torch.zeros_like(z_out)
        for _ in range(self.dim):
            m, log_sigma = self.shift_and_gate(z, context)
            sigma = log_sigma.exp()
            z = (z_out - (1 - sigma) * m) / sigma
        return z


class SylvesterStep(FlowStep):
    r"""Sylvester step z' = z + Q R tanh(R̃ Qᵀ z + b), Q (d × M) with orthonormal columns, R, R̃ upper triangular.

    van den Berg et al. (2018), eqs. 13–19: A = QR and B = R̃Qᵀ make det(I + A diag(h') B) =
    Π_i (1 + h'((R̃Qᵀz + b)_i) r̃_ii r_ii), so log|det| = Σ_i log|1 + r̃_ii r_ii h'(·)_i|. The diagonals
    r_ii = tanh(·), r̃_ii = tanh(·) keep r̃_ii r_ii > −1 ≥ −1/h', so every factor is positive and the map is
    invertible (their Theorem 2). R takes the upper and R̃ the (transposed) lower triangle of one M × M
    parameter matrix, as in their code. Q per variant (sec. 4):

    - ``orthogonal``: M ≤ d columns, a free d × M matrix made orthonormal: the limit of their iterative
      procedure (Björck & Bowie, their eq. 20), its polar factor, computed in closed form by :class:`PolarFactor`;
    - ``householder``: M = d, Q = H_1 ⋯ H_R, a product of ``reflections`` Householder reflections;
    - ``triangular``: M = d, Q the identity on even steps and the order-reversing permutation on odd ones.

    Every parameter is per input (amortised): ``params`` rows [R/R̃ entries (M²), diag R (M), diag R̃ (M),
    b (M), Q's parameters].

    References:
        | Sylvester Normalizing Flows for Variational Inference (van den Berg et al., 2018)
        | https://arxiv.org/abs/1803.05649

    Arguments:
        dim: The latent dimension d.
        variant: How Q is built: ``orthogonal``, ``householder`` or ``triangular``.
        columns: The number M of orthonormal columns (``orthogonal`` only; 1..d).
        reflections: The number R of Householder reflections in Q (``householder`` only).
        index: The step's position (``triangular``: odd steps reverse the order).
    """

    def __init__(self, dim: int, variant: SylvesterKind, columns: int | None = None, reflections: int = 4,
                 index: int = 0) -> None:
        super().__init__(dim)
        self.variant = variant
        if variant == "orthogonal":
            self.columns = dim if columns is None else columns
            if not 1 <= self.columns <= dim:
                raise ConfigError(f"sylvester_columns must be in 1..{dim}, got {self.columns}")
            q_params = dim * self.columns
        elif variant == "householder":
            if reflections < 1:
                raise ConfigError(f"sylvester_reflections must be >= 1, got {reflections}")
            self.columns, self.reflections, q_params = dim, reflections, reflections * dim
        elif variant == "triangular":
            self.columns, q_params = dim, 0
            eye = torch.eye(dim)
            self.register_buffer("permutation", eye.flip(-1) if index % 2 else eye, persistent=False)
        else:
            raise ConfigError(f"unknown Sylvester variant {variant!r}")
        m = self.columns
        self.sizes = [m * m, m, m, m, q_params]
        self.num_params = sum(self.sizes)
        self.register_buffer("upper", torch.ones(m, m).triu(1), persistent=False)

    @property
    def size_note(self) -> str:
        if self.variant == "orthogonal":
            return f", M = {self.columns}"
        return f", {self.reflections} reflections" if self.variant == "householder" else ""

    def init_params(self) -> torch.Tensor:
        """Near the identity: small off-diagonals, r_ii = r̃_ii = 0, b = 0; a random (non-degenerate) Q."""
        m = self.columns
        return torch.cat([0.01 * torch.randn(m * m), torch.zeros(3 * m), torch.randn(self.sizes[-1])])

    def orthonormal_columns(self, q_params: torch.Tensor) -> torch.Tensor:
        """Q (B or 1, d, M) with QᵀQ = I from the Q parameters (B or 1, ·)."""
        if self.variant == "triangular":
            return self.permutation.to(q_params.dtype).expand(q_params.shape[0], -1, -1)
        if self.variant == "householder":
            return householder_matrix(q_params.reshape(-1, self.reflections, self.dim))
        q = q_params.reshape(-1, self.dim, self.columns)
        return PolarFactor.apply(q / q.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None])

    def triangular_factors(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """R, R̃ (·, M, M) and the product of their diagonals r_ii r̃_ii (·, M)."""
        m = self.columns
        full, diag_r, diag_rt, _, _ = torch.split(params, self.sizes, dim=-1)
        full = full.reshape(-1, m, m)
        diag_r, diag_rt = torch.tanh(diag_r), torch.tanh(diag_rt)
        r = full * self.upper + torch.diag_embed(diag_r)
        r_tilde = full.transpose(1, 2) * self.upper + torch.diag_embed(diag_rt)
        return r, r_tilde, diag_r * diag_rt

    def folds_q(self, z: torch.Tensor) -> bool:
        """Whether to fold Q into R and R̃ once per input, for z (…, B, d) of S = prod(…) draws per input.

        Folding costs 2·d·M² multiply-adds per input and saves 2·M² of the 2·(d·M + M²) per draw that
        applying the factors one after another costs, so it pays from S = d draws (an importance-weighted
        bound); training (one draw per input) applies the factors in turn.
        """
        draws = z[..., 0, 0].numel()
        return draws >= self.dim

    def forward(self, z, params, context=None):
        r, r_tilde, diag = self.triangular_factors(params)
        bias, q_params = torch.split(params, self.sizes, dim=-1)[3:]
        q = self.orthonormal_columns(q_params)
        if self.folds_q(z):
            # Per input, once for all its draws: Bᵀ = Q R̃ᵀ (d × M) and Aᵀ = Rᵀ Qᵀ (M × d), z as rows.
            b_t, a_t = q @ r_tilde.transpose(1, 2), r.transpose(1, 2) @ q.transpose(1, 2)
            h = torch.tanh(per_input_matmul(z, b_t) + bias)  # (R̃ Qᵀ z + b)ᵀ, (…, B, M)
            out = z + per_input_matmul(h, a_t)
        else:  # the factors one after another: matrix-vector products only
            h = torch.tanh(per_input_matmul(per_input_matmul(z, q), r_tilde.transpose(1, 2)) + bias)
            out = z + per_input_matmul(per_input_matmul(h, r.transpose(1, 2)), q.transpose(1, 2))
        logdet = torch.log((1 + diag * (1 - h.pow(2))).abs()).sum(-1)
        return out, logdet


def make_steps(
    kind: LatentFlowKind, dim: int, length: int, *, nice_hidden: int = 64, iaf_hidden: int = 64,
    context_features: int = 0, sylvester_columns: int | None = None, sylvester_reflections: int = 4,
) -> list[FlowStep]:
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
    if kind == "iaf":
        return [IAFStep(dim, context_features, iaf_hidden, reverse=k % 2 == 1) for k in range(length)]
    if kind in AMORTISED_KINDS:
        variant = kind.removeprefix("sylvester_")
        return [SylvesterStep(dim, variant, sylvester_columns, sylvester_reflections, k) for k in range(length)]
    raise ConfigError(f"unknown latent flow {kind!r}")


class LatentFlow(nn.Module):
    """A chain of K steps, ``forward(z, params=None, context=None)`` -> ``(z_K, Σ_k log|det ∂z_k/∂z_{k−1}|)``.

    ``dynamic=False`` holds the step parameters as one learned vector; ``dynamic=True`` takes them per input
    (``params``, from the encoder). The Sylvester kinds are always dynamic; IAF steps have no per-input
    parameters and read the encoder context instead.

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770

    Arguments:
        kind: The step kind: ``none``, ``planar``, ``radial``, ``householder``, ``nice``, ``iaf``,
            ``sylvester_orthogonal``, ``sylvester_householder`` or ``sylvester_triangular``.
        dim: The latent dimension d.
        length: The number of steps K.
        dynamic: Whether the step parameters come per input from the encoder.
        nice_hidden: The width of the NICE coupling networks.
        iaf_hidden: The width of the IAF MADEs.
        context_features: The width of the encoder context the IAF steps read.
        sylvester_columns: The number M of orthonormal columns of the orthogonal Sylvester steps (default d).
        sylvester_reflections: The number of Householder reflections in each Householder Sylvester step.
    """

    def __init__(
        self, kind: LatentFlowKind, dim: int, length: int, *, dynamic: bool = False, nice_hidden: int = 64,
        iaf_hidden: int = 64, context_features: int = 0, sylvester_columns: int | None = None,
        sylvester_reflections: int = 4,
    ) -> None:
        super().__init__()
        self.kind, self.dim, self.length = kind, dim, length
        self.steps = nn.ModuleList(make_steps(
            kind, dim, length, nice_hidden=nice_hidden, iaf_hidden=iaf_hidden, context_features=context_features,
            sylvester_columns=sylvester_columns, sylvester_reflections=sylvester_reflections,
        ))
        self.sizes = [s.num_params for s in self.steps]
        self.planar = bool(self.steps) and all(isinstance(s, PlanarStep) for s in self.steps)
        self.num_params = sum(self.sizes)
        self.dynamic = (dynamic or kind in AMORTISED_KINDS) and self.num_params > 0
        if not self.dynamic and self.num_params > 0:
            self.params = nn.Parameter(self.init_params())
        else:
            self.register_parameter("params", None)

    @property
    def label(self) -> str:
        """What the flow is, for tables and figures: ``planar, K = 10``, ``sylvester_orthogonal, K = 8, M = 20``,
        ``none`` without steps."""
        return f"{self.kind}, K = {self.length}{self.steps[0].size_note}" if self.steps else "none"

    def init_params(self) -> torch.Tensor:
        """A vector the dynamic head's bias can start from (near-identity flow)."""
        if not self.steps:
            return torch.zeros(0)
        return torch.cat([s.init_params() for s in self.steps])

    def forward(
        self, z: torch.Tensor, params: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = z.new_zeros(z.shape[:-1])
        if not self.steps:
            return z, logdet
        if params is None:
            if self.dynamic:
                raise ConfigError("a dynamic latent flow needs params from the encoder")
            params = z.new_zeros(1, 0) if self.params is None else self.params.unsqueeze(0)
        if self.planar:  # every step planar: one call for the chain where the compiled path applies
            chained = PlanarStep.chain(z, params.view(params.shape[0], self.length, -1))
            if chained is not None:
                return chained
        for step, p in zip(self.steps, torch.split(params, self.sizes, dim=-1), strict=True):
            z, ld = step(z, p, context)
            logdet = logdet + ld
        return z, logdet
