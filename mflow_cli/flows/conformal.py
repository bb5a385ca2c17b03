"""A conformal dimension-raising map conditioned on a context (conformal embedding flows, Ross & Cresswell 2021).

c(u; v) = s(v) · Q(v) · [u; 0] + t(v) maps R^d -> R^D (d <= D): zero-padding, an orthogonal map Q built
from Householder reflections H_j = I − 2 w_j w_jᵀ / ‖w_j‖², a positive scale s and a shift t. Its
Jacobian is s·Q[:, :d], so JᵀJ = s² I_d and ½ log det(JᵀJ) = d · log s exactly; the left inverse
c†(x) = first d coordinates of Qᵀ(x − t) / s is the orthogonal projection onto the image.
With d = D it is an invertible similarity map with log|det J| = D · log s.

The reflection vectors, the log-scale and the shift are small affine functions of the context (the chart
centre v_k in VQ-Flow), so one module gives every chart its own placement, orientation and size.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .latent import householder_product


class ConditionalConformalEmbedding(nn.Module):
    """c(·; v): R^d -> R^D, a context-dependent similarity after zero-padding.

    References:
        | Tractable Density Estimation on Learned Manifolds with Conformal Embedding Flows (Ross & Cresswell, 2021)
        | https://arxiv.org/abs/2106.05275

    Arguments:
        latent_dim: The input dimension d.
        data_dim: The output dimension D (≥ d).
        context_features: The width of the context v.
        num_householder: The number J of Householder reflections composing the rotation Q.
    """

    def __init__(self, latent_dim: int, data_dim: int, context_features: int, num_householder: int = 2) -> None:
        super().__init__()
        if not 1 <= latent_dim <= data_dim:
            raise ConfigError(f"latent_dim must be in 1..{data_dim}, got {latent_dim}")
        self.latent_dim, self.data_dim, self.num_householder = latent_dim, data_dim, num_householder
        self.base_vectors = nn.Parameter(torch.randn(num_householder, data_dim))
        self.vector_net = nn.Linear(context_features, num_householder * data_dim)
        self.scale_net = nn.Linear(context_features, 1)
        self.shift_net = nn.Linear(context_features, data_dim)
        for lin in (self.vector_net, self.scale_net, self.shift_net):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def params(
        self, context: torch.Tensor, offset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reflection vectors (B, J, D), log-scale (B,), shift (B, D) for a batch of contexts (+ ``offset``)."""
        w = self.base_vectors + self.vector_net(context).reshape(-1, self.num_householder, self.data_dim)
        shift = self.shift_net(context)
        return w, self.scale_net(context)[:, 0], shift if offset is None else shift + offset

    def forward(
        self, u: torch.Tensor, context: torch.Tensor, offset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x = c(u; v) (B, D) and ½ log det(JᵀJ) = d · log s (B,). ``offset`` (B, D) adds to the shift."""
        w, log_s, t = self.params(context, offset)
        pad = u.new_zeros(u.shape[0], self.data_dim - self.latent_dim)
        x = log_s.exp()[:, None] * householder_product(torch.cat([u, pad], dim=1), w) + t
        return x, self.latent_dim * log_s

    def project(
        self, x: torch.Tensor, context: torch.Tensor, offset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u = c†(x; v) (B, d) and ½ log det(JᵀJ) of c at u (B,)."""
        w, log_s, t = self.params(context, offset)
        y = householder_product((x - t) * torch.exp(-log_s)[:, None], w, transpose=True)
        return y[:, : self.latent_dim], self.latent_dim * log_s
