"""Drop-in replacements for nflows' RQ-spline and affine coupling layers that use the fused kernels.

Same constructor arguments, same submodules and buffers (so the same ``state_dict`` keys: checkpoints
load into either class), same numerics. The conditioner network stays a torch module; the fused
part is the element-wise transform with its log-det, plus the split/merge of the features, done in
one kernel call (:mod:`mflow_cli.kernels`). Whatever the kernels cannot serve (no extension, 4-D
inputs, non-linear tails, an unconditional transform, vmap/grad transforms) runs nflows' own code.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from nflows import transforms as T

from .. import kernels


def _check_features(inputs: torch.Tensor, features: int) -> None:
    if inputs.shape[1] != features:
        raise ValueError(f"Expected features = {features}, got {inputs.shape[1]}.")


class FusedRQCouplingTransform(T.PiecewiseRationalQuadraticCouplingTransform):
    """:class:`nflows.transforms.PiecewiseRationalQuadraticCouplingTransform` on the fused spline kernel."""

    def _divisor(self) -> float:
        net = self.transform_net
        if hasattr(net, "hidden_features"):
            return float(np.sqrt(net.hidden_features))
        if hasattr(net, "hidden_channels"):
            return float(np.sqrt(net.hidden_channels))
        warnings.warn("Inputs to the softmax are not scaled down: initialization might be bad.", stacklevel=3)
        return 1.0

    def _fusable(self, inputs: torch.Tensor) -> bool:
        return (
            inputs.dim() == 2
            and self.tails == "linear"
            and self.unconditional_transform is None
            and self.num_bins <= 64
            and kernels.fused_enabled()
        )

    def _run(self, inputs: torch.Tensor, context, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _check_features(inputs, self.features)
        params = self.transform_net(inputs[:, self.identity_features], context)
        params = params.reshape(inputs.shape[0], self.num_transform_features, -1)
        return kernels.rq_coupling(
            inputs, params, self.transform_features, inverse, self.num_bins, self.tail_bound,
            self.min_bin_width, self.min_bin_height, self.min_derivative, self._divisor(),
        )

    def forward(self, inputs, context=None):
        if self._fusable(inputs):
            return self._run(inputs, context, inverse=False)
        return super().forward(inputs, context)

    def inverse(self, inputs, context=None):
        if self._fusable(inputs):
            return self._run(inputs, context, inverse=True)
        return super().inverse(inputs, context)


class FusedAffineCouplingTransform(T.AffineCouplingTransform):
    """:class:`nflows.transforms.AffineCouplingTransform` on the fused affine kernel."""

    def _fusable(self, inputs: torch.Tensor) -> bool:
        return inputs.dim() == 2 and self.unconditional_transform is None and kernels.fused_enabled()

    def _run(self, inputs: torch.Tensor, context, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _check_features(inputs, self.features)
        params = self.transform_net(inputs[:, self.identity_features], context)
        return kernels.affine_coupling(inputs, params, self.transform_features, inverse)

    def forward(self, inputs, context=None):
        if self._fusable(inputs):
            return self._run(inputs, context, inverse=False)
        return super().forward(inputs, context)

    def inverse(self, inputs, context=None):
        if self._fusable(inputs):
            return self._run(inputs, context, inverse=True)
        return super().inverse(inputs, context)
