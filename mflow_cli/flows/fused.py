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

import contextlib
import warnings
import weakref
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from nflows import transforms as T
from nflows.nn.nets import ResidualNet

from .. import kernels


def flow_leaves(transform: T.Transform) -> list[T.Transform]:
    """The layers of ``transform`` in the order its forward pass runs them, nested CompositeTransforms flattened."""
    if isinstance(transform, T.CompositeTransform):
        return [leaf for t in transform._transforms for leaf in flow_leaves(t)]
    return [transform]


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

    def spline_config(self) -> tuple[int, float, float, float, float, float]:
        """(num_bins, tail_bound, min_bin_width, min_bin_height, min_derivative, divisor), as the kernels take them."""
        return (self.num_bins, self.tail_bound, self.min_bin_width, self.min_bin_height, self.min_derivative,
                self._divisor())

    def kernel_ok(self) -> bool:
        """Whether the spline kernel can serve this layer at all (linear tails, no unconditional part, ≤ 64 bins)."""
        return self.tails == "linear" and self.unconditional_transform is None and self.num_bins <= 64

    def _fusable(self, inputs: torch.Tensor) -> bool:
        return inputs.dim() in (2, 4) and self.kernel_ok() and kernels.fused_enabled()

    def _run(self, inputs: torch.Tensor, context, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _check_features(inputs, self.features)
        spline = self.spline_config()
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


class _PassProgram:
    """A flow's forward or inverse pass as a :func:`mflow_cli.kernels.flow_pass` program (``csrc/flow_pass.cpp``):
    the step kinds, integers, floats and index tensors fixed when compiled; the parameters read at every call
    from the layers' own parameter dicts (so an optimiser step, ``load_state_dict`` or ``.double()`` is always
    seen). Permutations carry their inverse, computed when compiled and recompiled when the buffer is written."""

    def __init__(self, flow: T.Transform, inverse: bool) -> None:
        self.inverse = inverse
        kinds: list[int] = []
        ints: list[int] = []
        doubles: list[float] = []
        layout: list[int | torch.Tensor] = []
        self.sources: list[tuple[dict, str]] = []  # where each parameter lives
        self.watched: list[tuple[dict, str, torch.Tensor, int]] = []  # index buffers as compiled
        self.dropouts: list[torch.nn.Module] = []
        self.supported = True

        def parameters(*pairs: tuple[dict, str]) -> None:
            for pair in pairs:
                layout.append(len(self.sources))
                self.sources.append(pair)

        def indices(*tensors: torch.Tensor) -> None:
            layout.extend(tensors)

        for leaf in reversed(flow_leaves(flow)) if inverse else flow_leaves(flow):
            if isinstance(leaf, T.IdentityTransform):
                continue
            if isinstance(leaf, T.Permutation) and leaf._dim == 1:
                perm = leaf._permutation
                with torch.no_grad():
                    back = torch.argsort(perm)
                kinds.append(0)
                indices(*((back, perm) if inverse else (perm, back)))
                self.watched.append((leaf._buffers, "_permutation", perm, perm._version))
            elif isinstance(leaf, FusedLULinear):
                kinds.append(1)
                parameters(*((leaf._parameters, n) for n in ("lower_entries", "upper_entries",
                                                             "unconstrained_upper_diag", "bias")))
                indices(leaf._lower_flat, leaf._upper_flat)
                doubles.append(float(leaf.eps))
            elif self._coupling_ok(leaf):
                net = leaf.transform_net
                kinds.append(2)
                indices(leaf.identity_features, leaf.transform_features)
                self.watched += [(leaf._buffers, n, leaf._buffers[n], leaf._buffers[n]._version)
                                 for n in ("identity_features", "transform_features")]
                linears = [net.initial_layer, *(lin for b in net.blocks for lin in b.linear_layers), net.final_layer]
                parameters(*((lin._parameters, n) for lin in linears for n in ("weight", "bias")))
                self.dropouts += [b.dropout for b in net.blocks if b.dropout.p > 0]
                num_bins, *spline = leaf.spline_config()
                ints += [len(net.blocks), num_bins]
                doubles += [float(v) for v in spline]
            else:
                self.supported = False
                break
        self.program = (kinds, ints, doubles, layout)

    @staticmethod
    def _coupling_ok(leaf: T.Transform) -> bool:
        return (isinstance(leaf, FusedRQCouplingTransform) and leaf.kernel_ok() and _functional_ok(leaf.transform_net)
                and leaf.transform_net.context_features is None)

    def stale(self) -> bool:
        """Whether an index buffer was written or replaced since compiling (``load_state_dict``, ``.to()``)."""
        return any(table[name] is not t or t._version != version for table, name, t, version in self.watched)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if any(d.training for d in self.dropouts):  # active dropout: the layers' own sampling
            return None
        return kernels.flow_pass(x, self.inverse, self.program, [table[name] for table, name in self.sources])


_pass_programs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_whole_passes = {"enabled": True}


@contextlib.contextmanager
def per_layer_passes() -> Iterator[None]:
    """Inside the block :func:`flow_pass` runs the flow's own calls, one autograd node per fused layer (what
    ``mflow bench`` compares the whole-pass node against)."""
    old = _whole_passes["enabled"]
    _whole_passes["enabled"] = False
    try:
        yield
    finally:
        _whole_passes["enabled"] = old


def flow_pass(flow: T.Transform, x: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``flow(x)`` (or ``flow.inverse(x)``) -> ``(outputs, logabsdet)``; for a stack of permutations, fused LU
    layers and fused RQ couplings with ResidualNet conditioners on float CPU rows, the whole pass as one autograd
    node with a compiled backward (:func:`mflow_cli.kernels.flow_pass`): a 2-D flow's training step otherwise
    spends about as long in per-layer Python and autograd bookkeeping as in arithmetic. Anything else (other
    layers, CUDA, active dropout, functorch transforms, the reference path) runs the flow's own calls."""
    if _whole_passes["enabled"] and kernels.flow_pass_available(x):  # checked first: no functorch wrappers kept
        per_flow = _pass_programs.setdefault(flow, {})
        program = per_flow.get(inverse)
        if program is None or program.stale():
            program = per_flow[inverse] = _PassProgram(flow, inverse)
        if program.supported and (result := program(x)) is not None:
            return result
    return flow.inverse(x) if inverse else flow(x)
