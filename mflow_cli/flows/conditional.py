"""Flows conditioned on a context vector (VQ-Flow: the chart centre v_k), built from nflows transforms.

One set of weights serves every chart: each chart map f_k = f(·; v_k) depends on k only through the
context (VQ-Flow paper, "The chart maps"). Two kinds, as in the paper's MNIST experiments:

- ``realnvp``: affine coupling layers (Dinh et al. 2017) with alternating masks and context-fed
  residual nets, each preceded by a fixed permutation;
- ``maf``: masked affine autoregressive layers (Papamakarios et al. 2017) with context-fed MADEs.

Both put an (unconditional) LU-decomposed linear layer between steps, so the flow can mix features.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from nflows import transforms as T
from nflows.nn.nets import ResidualNet
from nflows.utils import create_alternating_binary_mask
from torch import nn

FlowKind = Literal["realnvp", "maf"]

_SOFTPLUS_ONE = 0.5413248546129181  # softplus(x) = 1 at this x, so a zero-initialised net starts near identity


class SoftplusAffineCoupling(T.AffineCouplingTransform):
    """nflows' affine coupling with scale = softplus(·) + 1e-3 instead of sigmoid(· + 2) + 1e-3.

    nflows' sigmoid scale is below 1.001, so a coupling step can only contract in the data -> noise
    direction; densities of thin, concentrated data need expansion there. Softplus (as nflows' MAF uses)
    lets the scale grow without bound.
    """

    def _scale_and_shift(self, transform_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        unconstrained = transform_params[:, self.num_transform_features :, ...]
        shift = transform_params[:, : self.num_transform_features, ...]
        return F.softplus(unconstrained + _SOFTPLUS_ONE) + 1e-3, shift


class ContextResidualNet(nn.Module):
    """nflows' ResidualNet on [inputs, context] (concatenated).

    nflows' own context path gates with ``F.glu``, whose forward-mode derivative has no backward in
    torch, so it cannot train through the batched Jacobian (:mod:`mflow_cli.jacobian`); this one can.
    """

    def __init__(
        self, in_features: int, out_features: int, context_features: int | None, hidden_features: int,
        num_blocks: int, dropout: float,
    ) -> None:
        super().__init__()
        self.net = ResidualNet(
            in_features + (context_features or 0), out_features, hidden_features=hidden_features,
            num_blocks=num_blocks, dropout_probability=dropout,
        )

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(inputs if context is None else torch.cat([inputs, context], dim=1))


def _linear(features: int) -> T.Transform:
    if features == 1:
        return T.IdentityTransform()
    return T.CompositeTransform([T.RandomPermutation(features), T.LULinear(features, identity_init=True)])


def conditional_flow(
    features: int,
    layers: int,
    context_features: int | None,
    *,
    kind: FlowKind = "realnvp",
    hidden_features: int = 64,
    num_blocks: int = 2,
    dropout: float = 0.0,
) -> T.CompositeTransform:
    """``layers`` steps of ``kind`` on ``features`` dims, conditioned on ``context_features`` (or none).

    nflows convention: ``flow(x, context)`` maps data to noise and returns log|det ∂z/∂x|.
    """
    if kind == "realnvp" and features < 2:
        raise ValueError("a RealNVP coupling flow needs at least 2 features; use kind 'maf'")

    def net(in_features: int, out_features: int) -> nn.Module:
        return ContextResidualNet(in_features, out_features, context_features, hidden_features, num_blocks, dropout)

    steps: list[T.Transform] = []
    for i in range(layers):
        steps.append(_linear(features))
        if kind == "realnvp":
            mask = create_alternating_binary_mask(features, even=(i % 2 == 0))
            steps.append(SoftplusAffineCoupling(mask=mask, transform_net_create_fn=net))
        else:
            steps.append(
                T.MaskedAffineAutoregressiveTransform(
                    features, hidden_features, context_features=context_features, num_blocks=num_blocks,
                    dropout_probability=dropout,
                )
            )
    steps.append(_linear(features))
    return T.CompositeTransform(steps)
