"""Flows conditioned on a context vector (VQ-Flow: the chart centre v_k), built from nflows transforms.

One set of weights serves every chart: each chart map f_k = f(·; v_k) depends on k only through the
context (VQ-Flow paper, "The chart maps"). Two kinds, as in the paper's MNIST experiments:

- ``realnvp``: affine coupling layers (Dinh et al. 2017) with alternating masks and context-fed
  residual nets, each preceded by a fixed permutation;
- ``maf``: masked affine autoregressive layers (Papamakarios et al. 2017) with context-fed MADEs.

Both put an (unconditional) permutation, by default followed by an LU-decomposed linear layer, between
steps, so the flow can mix features. Scales are exp(bounded log-scale) (see :func:`bounded_log_scale`).
"""

from __future__ import annotations

from typing import Literal

import torch
from nflows import transforms as T
from nflows.nn.nets import ResidualNet
from nflows.utils import create_alternating_binary_mask
from torch import nn

from ..errors import ConfigError
from .builders import LinearKind, linear_layer

FlowKind = Literal["realnvp", "maf"]


def bounded_log_scale(unconstrained: torch.Tensor, bound: float = 2.0) -> torch.Tensor:
    """log-scale = bound·tanh(u / bound): 0 at u = 0 (identity start), |log-scale| < bound per layer.

    nflows' coupling scale sigmoid(u + 2) + 1e-3 is below 1.001, so a step can only contract in the data ->
    noise direction (thin, concentrated data needs expansion there); its MAF's softplus scale is unbounded
    and diverged on MNIST in the first steps. A bounded log-scale allows both directions and stays stable.
    """
    return bound * torch.tanh(unconstrained / bound)


class BoundedAffineCoupling(T.AffineCouplingTransform):
    """nflows' affine coupling with scale = exp(:func:`bounded_log_scale`) (Dinh et al. 2017, eqs. 7–8).

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803

    Arguments:
        mask: Which features condition (≤ 0) and which are transformed (> 0), as in nflows.
        transform_net_create_fn: A function (in_features, out_features) -> the conditioner network.
        unconditional_transform: An optional transform of the conditioning features (nflows; unused here).
    """

    def _scale_and_shift(self, transform_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        unconstrained = transform_params[:, self.num_transform_features :, ...]
        shift = transform_params[:, : self.num_transform_features, ...]
        return torch.exp(bounded_log_scale(unconstrained)), shift


class BoundedMaskedAffineAutoregressive(T.MaskedAffineAutoregressiveTransform):
    """nflows' MAF layer with scale = exp(:func:`bounded_log_scale`) (Papamakarios et al. 2017, eq. 4).

    References:
        | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        | https://arxiv.org/abs/1705.07057

    Arguments:
        features: The number of features.
        hidden_features: The width of the MADE.
        context_features: The width of the context fed to the MADE (None: unconditional).
        num_blocks: The number of MADE blocks.
        use_residual_blocks: Whether the MADE blocks are residual.
        random_mask: Whether the MADE's hidden degrees are random (only without residual blocks).
        activation: The MADE's activation function.
        dropout_probability: The MADE's dropout probability.
        use_batch_norm: Whether the MADE blocks use batch normalisation.
    """

    def _elementwise_forward(self, inputs, autoregressive_params):
        unconstrained, shift = self._unconstrained_scale_and_shift(autoregressive_params)
        log_scale = bounded_log_scale(unconstrained)
        return torch.exp(log_scale) * inputs + shift, log_scale.sum(-1)

    def _elementwise_inverse(self, inputs, autoregressive_params):
        unconstrained, shift = self._unconstrained_scale_and_shift(autoregressive_params)
        log_scale = bounded_log_scale(unconstrained)
        return (inputs - shift) * torch.exp(-log_scale), -log_scale.sum(-1)


class ContextResidualNet(nn.Module):
    """nflows' ResidualNet on [inputs, context] (concatenated), starting at output 0.

    nflows' own context path gates with ``F.glu``, whose forward-mode derivative has no backward in
    torch, so it cannot train through the batched Jacobian (:mod:`mflow_cli.jacobian`); this one can.

    Arguments:
        in_features: The number of inputs (without the context).
        out_features: The number of outputs.
        context_features: The width of the context (None: none).
        hidden_features: The width of the residual blocks.
        num_blocks: The number of residual blocks.
        dropout: The dropout probability.
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
        # zero last layer: every coupling step starts as the identity (deep stacks on 784-D data otherwise
        # compound their random shifts into z of order 1e4)
        nn.init.zeros_(self.net.final_layer.weight)
        nn.init.zeros_(self.net.final_layer.bias)

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(inputs if context is None else torch.cat([inputs, context], dim=1))


def conditional_flow(
    features: int,
    layers: int,
    context_features: int | None,
    *,
    kind: FlowKind = "realnvp",
    linear: LinearKind = "lu",
    hidden_features: int = 64,
    num_blocks: int = 2,
    dropout: float = 0.0,
) -> T.CompositeTransform:
    """``layers`` steps of ``kind`` on ``features`` dims, conditioned on ``context_features`` (or none).

    nflows convention: ``flow(x, context)`` maps data to noise and returns log|det ∂z/∂x|.

    References:
        | Density estimation using Real NVP (Dinh et al., 2017)
        | https://arxiv.org/abs/1605.08803

        | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        | https://arxiv.org/abs/1705.07057

    Arguments:
        features: The number of features (at least 2 for ``realnvp``).
        layers: The number of coupling/autoregressive layers.
        context_features: The width of the context (None: an unconditional flow).
        kind: ``realnvp`` (affine coupling, alternating masks) or ``maf`` (masked affine autoregressive).
        linear: The mixing before each layer: ``lu`` (permutation + LU-linear) or ``permutation``.
        hidden_features: The width of the conditioner networks.
        num_blocks: The number of residual blocks per conditioner.
        dropout: The conditioners' dropout probability.
    """
    if kind == "realnvp" and features < 2:
        raise ConfigError("a RealNVP coupling flow needs at least 2 features; use kind 'maf'")

    def net(in_features: int, out_features: int) -> nn.Module:
        return ContextResidualNet(in_features, out_features, context_features, hidden_features, num_blocks, dropout)

    steps: list[T.Transform] = []
    for i in range(layers):
        steps.append(linear_layer(features, linear))
        if kind == "realnvp":
            mask = create_alternating_binary_mask(features, even=(i % 2 == 0))
            steps.append(BoundedAffineCoupling(mask=mask, transform_net_create_fn=net))
        else:
            steps.append(
                BoundedMaskedAffineAutoregressive(
                    features, hidden_features, context_features=context_features, num_blocks=num_blocks,
                    dropout_probability=dropout,
                )
            )
    steps.append(linear_layer(features, linear))
    return T.CompositeTransform(steps)
