"""Pure-PyTorch reference implementations of the fused ops (same signatures as the fused ones).

They are nflows' own code paths (the RQ spline is nflows' ``unconstrained_rational_quadratic_spline``,
the affine map is nflows' ``AffineCouplingTransform`` formula) wrapped to the coupling-op interface:
``x`` is the full (N, D) input, ``tidx`` the transformed features, the rest of ``x`` passes unchanged.
"""

from __future__ import annotations

import torch
from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline


def rq_coupling(
    x: torch.Tensor,
    params: torch.Tensor,
    tidx: torch.Tensor,
    inverse: bool,
    num_bins: int,
    tail_bound: float,
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
    divisor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RQ-spline coupling on features ``tidx`` of ``x`` (N, D) with raw parameters (N, F, 3K-1), linear tails."""
    k = num_bins
    y, ld = unconstrained_rational_quadratic_spline(
        x[:, tidx],
        params[..., :k] / divisor,
        params[..., k : 2 * k] / divisor,
        params[..., 2 * k :],
        inverse=inverse,
        tails="linear",
        tail_bound=tail_bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
    return x.index_copy(1, tidx, y), ld.sum(-1)


def affine_coupling(
    x: torch.Tensor, params: torch.Tensor, tidx: torch.Tensor, inverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling on features ``tidx``; params (N, 2F) = [shift, unconstrained scale] as in nflows."""
    f = tidx.shape[0]
    shift, scale = params[:, :f], torch.sigmoid(params[:, f:] + 2) + 1e-3
    xt = x[:, tidx]
    if inverse:
        return x.index_copy(1, tidx, (xt - shift) / scale), -torch.log(scale).sum(-1)
    return x.index_copy(1, tidx, xt * scale + shift), torch.log(scale).sum(-1)


def logdet_gram(jac: torch.Tensor) -> torch.Tensor:
    """log det(JᵀJ) for (B, D, d) via a Cholesky factor of the Gram matrix."""
    gram = jac.transpose(1, 2) @ jac
    chol = torch.linalg.cholesky(gram)
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
