"""Build the flows of the manifold-flow papers from nflows transforms.

Each layer is ``[permutation or LU-linear] -> coupling``, closed by a final linear layer, as in the
M-flow/DNF code (outer: ``rq_coupling`` with ``lu``; inner: ``affine_autoregressive``).
"""

from __future__ import annotations

from typing import Literal

from nflows import transforms as T
from nflows.nn.nets import ResidualNet
from nflows.utils import create_alternating_binary_mask

from ..errors import ConfigError
from .fused import FusedAffineCouplingTransform, FusedLULinear, FusedRQCouplingTransform

LinearKind = Literal["lu", "permutation"]
CouplingKind = Literal["rq_coupling", "affine_coupling"]
InnerKind = Literal["affine_autoregressive", "rq_coupling", "affine_coupling"]


def linear_layer(features: int, kind: LinearKind) -> T.Transform:
    """The mixing layer between coupling steps: a fixed permutation, then (``lu``) a fused LU-linear map."""
    if features == 1:
        return T.IdentityTransform()
    if kind == "lu":
        return T.CompositeTransform([T.RandomPermutation(features), FusedLULinear(features, identity_init=True)])
    return T.RandomPermutation(features)


def check_flow_sizes(
    layers: int, spline_bins: int, spline_range: float, hidden_features: int, num_blocks: int, dropout: float
) -> None:
    """Raise :class:`ConfigError` for flow sizes no flow can have (the recipe keys' names in the message)."""
    for name, value, low in (("layers", layers, 0), ("spline_bins", spline_bins, 1), ("hidden_features",
                             hidden_features, 1), ("num_blocks", num_blocks, 1)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if not spline_range > 0:
        raise ConfigError(f"spline_range must be > 0, got {spline_range}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")


def _net_factory(hidden_features: int, num_blocks: int, dropout: float):
    def create(in_features: int, out_features: int) -> ResidualNet:
        return ResidualNet(
            in_features, out_features, hidden_features=hidden_features, num_blocks=num_blocks,
            dropout_probability=dropout,
        )

    return create


def coupling_flow(
    features: int,
    layers: int,
    *,
    kind: CouplingKind = "rq_coupling",
    linear: LinearKind = "lu",
    spline_bins: int = 5,
    spline_range: float = 3.0,
    hidden_features: int = 100,
    num_blocks: int = 2,
    dropout: float = 0.0,
) -> T.Transform:
    """``layers`` coupling steps on ``features`` dims, each preceded by a permutation/LU layer."""
    if features < 2:
        raise ConfigError("a coupling flow needs at least 2 features")
    check_flow_sizes(layers, spline_bins, spline_range, hidden_features, num_blocks, dropout)
    net = _net_factory(hidden_features, num_blocks, dropout)
    steps: list[T.Transform] = []
    for i in range(layers):
        mask = create_alternating_binary_mask(features, even=(i % 2 == 0))
        steps.append(linear_layer(features, linear))
        if kind == "rq_coupling":
            steps.append(
                FusedRQCouplingTransform(
                    mask=mask, transform_net_create_fn=net, num_bins=spline_bins, tails="linear",
                    tail_bound=spline_range,
                )
            )
        else:
            steps.append(FusedAffineCouplingTransform(mask=mask, transform_net_create_fn=net))
    steps.append(linear_layer(features, linear))
    return T.CompositeTransform(steps)


def inner_flow(
    features: int,
    layers: int,
    *,
    kind: InnerKind = "affine_autoregressive",
    linear: LinearKind = "lu",
    spline_bins: int = 5,
    spline_range: float = 3.0,
    hidden_features: int = 100,
    num_blocks: int = 2,
    dropout: float = 0.0,
) -> T.Transform:
    """The density flow on the latent manifold coordinates (any ``features`` >= 1)."""
    check_flow_sizes(layers, spline_bins, spline_range, hidden_features, num_blocks, dropout)
    if kind != "affine_autoregressive" and features >= 2:
        return coupling_flow(
            features, layers, kind=kind, linear=linear, spline_bins=spline_bins, spline_range=spline_range,
            hidden_features=hidden_features, num_blocks=num_blocks, dropout=dropout,
        )
    steps: list[T.Transform] = []
    for _ in range(layers):
        steps.append(linear_layer(features, linear))
        if kind == "rq_coupling":  # one feature: an unconditional monotone spline
            steps.append(
                T.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    features, hidden_features, num_bins=spline_bins, tails="linear", tail_bound=spline_range,
                    num_blocks=num_blocks, dropout_probability=dropout,
                )
            )
        else:
            steps.append(
                T.MaskedAffineAutoregressiveTransform(
                    features, hidden_features, num_blocks=num_blocks, dropout_probability=dropout
                )
            )
    steps.append(linear_layer(features, linear))
    return T.CompositeTransform(steps)
