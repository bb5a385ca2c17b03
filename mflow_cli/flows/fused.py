"""Drop-in replacements for nflows' RQ-spline and affine coupling layers that use the fused kernels, and
for its LU-linear layer with a leaner forward pass.

Same constructor arguments, same submodules and buffers (so the same ``state_dict`` keys: checkpoints
load into either class), same numerics. The conditioner network stays a torch module; the fused
part is the element-wise transform with its log-det, plus the split/merge of the features, done in
one kernel call (:mod:`mflow_cli.kernels`); image inputs (B, C, H, W) go to it as one row per pixel (the
RQ coupling). Whatever the kernels cannot serve (no extension, 4-D inputs to the affine coupling,
non-linear tails, an unconditional transform, vmap/grad transforms) runs nflows' own code.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from nflows import transforms as T
from nflows.nn.nets import ResidualNet

from .. import kernels


def _check_features(inputs: torch.Tensor, features: int) -> None:
    if inputs.shape[1] != features:
        raise ValueError(f"Expected features = {features}, got {inputs.shape[1]}.")


def _identity_part(layer, inputs: torch.Tensor) -> torch.Tensor:
    """The conditioner's input ``inputs[:, identity_features]``: a strided view when the features are evenly
    spaced (alternating masks), which saves a gather and its scatter backward per layer."""
    if not hasattr(layer, "_identity_slice"):
        idx = layer.identity_features.tolist()
        step = idx[1] - idx[0] if len(idx) > 1 else 1
        evenly = step > 0 and idx == list(range(idx[0], idx[-1] + 1, step))
        layer._identity_slice = slice(idx[0], idx[-1] + 1, step) if evenly else None
    if layer._identity_slice is None:
        return inputs[:, layer.identity_features]
    return inputs[:, layer._identity_slice]


def _functional_ok(net: torch.nn.Module) -> bool:
    return type(net) is ResidualNet and all(b.activation is F.relu and not b.use_batch_norm for b in net.blocks)


def _one_node_params(net: torch.nn.Module) -> list[torch.Tensor] | None:
    """W0, b0, (W1, b1, W2, b2) per block, Wf, bf of a functional ResidualNet without active dropout, else None."""
    if not _functional_ok(net) or any(b.dropout.p > 0 and b.dropout.training for b in net.blocks):
        return None
    return [net.initial_layer.weight, net.initial_layer.bias,
            *(t for b in net.blocks for lin in b.linear_layers for t in (lin.weight, lin.bias)),
            net.final_layer.weight, net.final_layer.bias]


def conditioner(net: torch.nn.Module, inputs: torch.Tensor, context=None) -> torch.Tensor:
    """``net(inputs, context)``; for nflows' ResidualNet (ReLU, no batch norm) the same ops without the eleven
    module calls per evaluation (initial/final layers, blocks, their linear and dropout layers), and when a
    gradient is recorded one autograd node with a compiled backward (:func:`mflow_cli.kernels.residual_net`)."""
    if context is not None or not _functional_ok(net):
        return net(inputs, context)
    if (params := _one_node_params(net)) is not None:
        out = kernels.residual_net(inputs, params)  # training: one autograd node, compiled backward
        if out is not None:
            return out
    h = F.linear(inputs, net.initial_layer.weight, net.initial_layer.bias)
    for block in net.blocks:
        first, second = block.linear_layers
        t = F.relu(F.linear(F.relu(h), first.weight, first.bias))
        if block.dropout.p > 0:
            t = block.dropout(t)
        h = h + F.linear(t, second.weight, second.bias)
    return F.linear(h, net.final_layer.weight, net.final_layer.bias)


class FusedRQCouplingTransform(T.PiecewiseRationalQuadraticCouplingTransform):
    """:class:`nflows.transforms.PiecewiseRationalQuadraticCouplingTransform` on the fused spline kernel; image
    inputs (B, C, H, W) as one kernel row per pixel; in training (2-D inputs, a ResidualNet conditioner) the whole
    step as one autograd node (:func:`mflow_cli.kernels.rq_coupling_step`)."""

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
            inputs.dim() in (2, 4)
            and self.tails == "linear"
            and self.unconditional_transform is None
            and self.num_bins <= 64
            and kernels.fused_enabled()
        )

    def _run(self, inputs: torch.Tensor, context, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _check_features(inputs, self.features)
        spline = (self.num_bins, self.tail_bound, self.min_bin_width, self.min_bin_height, self.min_derivative,
                  self._divisor())
        if context is None and inputs.dim() == 2 and (net_params := _one_node_params(self.transform_net)):
            step = kernels.rq_coupling_step(inputs, self.identity_features, self.transform_features, net_params,
                                            inverse, *spline)  # training: the whole step as one autograd node
            if step is not None:
                return step
        params = conditioner(self.transform_net, _identity_part(self, inputs), context)
        if inputs.dim() == 2:
            params = params.reshape(inputs.shape[0], self.num_transform_features, -1)
            return kernels.rq_coupling(inputs, params, self.transform_features, inverse, *spline)
        # images (B, C, H, W): every pixel a row of C channels, its spline parameters (C_t, 3K-1) as nflows lays
        # them out (channel c's parameters in conditioner channels c·(3K-1) ... (c+1)·(3K-1) - 1)
        b, c, h, w = inputs.shape
        rows = inputs.permute(0, 2, 3, 1).reshape(b * h * w, c)
        params = params.reshape(b, self.num_transform_features, -1, h, w).permute(0, 3, 4, 1, 2)
        out, logdet = kernels.rq_coupling(rows, params.reshape(b * h * w, self.num_transform_features, -1),
                                          self.transform_features, inverse, *spline)
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2), logdet.reshape(b, h * w).sum(1)

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
        params = conditioner(self.transform_net, _identity_part(self, inputs), context)
        return kernels.affine_coupling(inputs, params, self.transform_features, inverse)

    def forward(self, inputs, context=None):
        if self._fusable(inputs):
            return self._run(inputs, context, inverse=False)
        return super().forward(inputs, context)

    def inverse(self, inputs, context=None):
        if self._fusable(inputs):
            return self._run(inputs, context, inverse=True)
        return super().inverse(inputs, context)


class FusedLULinear(T.LULinear):
    """:class:`nflows.transforms.LULinear` whose forward pass builds W = LU with one scatter per triangle and
    applies it in one ``F.linear`` (nflows: four ``index_put`` and two products per call, which dominate
    small 2-D flows), and whose inverse solves with the same triangles (nflows' two triangular solves, without its
    index_put construction). When a gradient is recorded, either pass is one autograd node with a compiled
    backward (:func:`mflow_cli.kernels.lu_linear`). Same parameters, same ``state_dict``."""

    def __init__(self, features: int, using_cache: bool = False, identity_init: bool = True, eps: float = 1e-3):
        super().__init__(features, using_cache, identity_init, eps)
        def flat(rows_cols) -> torch.Tensor:  # (row, col) index arrays -> positions in the flattened matrix
            return torch.as_tensor(rows_cols[0] * features + rows_cols[1], dtype=torch.long)

        self.register_buffer("_lower_flat", flat(self.lower_indices), persistent=False)
        self.register_buffer("_upper_flat", torch.cat([flat(self.upper_indices), flat(self.diag_indices)]),
                             persistent=False)
        self.register_buffer("_eye", torch.eye(features), persistent=False)

    def _triangles(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L (unit lower), U (upper) with W = L U, and U's diagonal."""
        d = self.features
        zeros = self.lower_entries.new_zeros(d * d)
        lower = zeros.scatter(0, self._lower_flat, self.lower_entries).view(d, d) + self._eye
        upper_diag = self.upper_diag
        upper = zeros.scatter(0, self._upper_flat, torch.cat([self.upper_entries, upper_diag])).view(d, d)
        return lower, upper, upper_diag

    def _one_node(self, inputs: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The pass as one autograd node with a compiled backward (training), or None where that does not apply."""
        return kernels.lu_linear(inputs, self.lower_entries, self.upper_entries, self.unconstrained_upper_diag,
                                 self.bias, self._lower_flat, self._upper_flat, self.eps, inverse)

    def forward_no_cache(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not kernels.fused_enabled():
            return super().forward_no_cache(inputs)
        if (result := self._one_node(inputs, inverse=False)) is not None:
            return result
        lower, upper, upper_diag = self._triangles()
        outputs = F.linear(inputs, lower @ upper, self.bias)
        return outputs, torch.log(upper_diag).sum().expand(inputs.shape[0]).contiguous()

    def inverse_no_cache(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not kernels.fused_enabled():
            return super().inverse_no_cache(inputs)
        if (result := self._one_node(inputs, inverse=True)) is not None:
            return result
        lower, upper, upper_diag = self._triangles()  # x = U⁻¹ L⁻¹ (y − b)
        cols = torch.linalg.solve_triangular(lower, (inputs - self.bias).T, upper=False, unitriangular=True)
        outputs = torch.linalg.solve_triangular(upper, cols, upper=True).T
        return outputs, (-torch.log(upper_diag).sum()).expand(inputs.shape[0]).contiguous()
