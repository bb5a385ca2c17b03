"""Jacobians of decoders R^d -> R^D for many points at once, and log det(JᵀJ).

The research code built J with one reverse-mode autograd call per output dimension. Two faster ways here:

- :func:`decoder_jacobian`, for the manifold flows' decoder g(u) = f⁻¹([u, 0]) with f an nflows
  ``CompositeTransform`` of mflow's layers: one inverse pass that carries the d tangents of every point
  along with its value, by the forward-mode rule of each layer written out (no ``torch.func`` on the hot
  path). Runs of linear layers (permutations, LU) fold into one cached affine map; a coupling step passes
  its identity half, pushes the tangents through the conditioner MLP by hand (linear layers, ReLU masks)
  and hands value and tangents of the spline/affine map to one kernel call
  (:func:`mflow_cli.kernels.rq_coupling_tangents`). Layers without a rule go through ``torch.func.jvp``.
- :func:`batched_jacobian`, for any decoder acting row by row: each point is repeated d times, the j-th
  copy carrying the tangent e_j, and ``torch.func.jvp`` pushes the (B·d)-row batch through it once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from nflows import transforms as T
from nflows.nn.nets import ResidualNet
from nflows.transforms.autoregressive import AutoregressiveTransform
from nflows.transforms.coupling import CouplingTransform

from . import kernels


def batched_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``fn(z)`` (B, D) and its Jacobians (B, D, d) for ``z`` of shape (B, d)."""
    b, d = z.shape
    z_rep = z.repeat_interleave(d, dim=0)
    tangents = torch.eye(d, dtype=z.dtype, device=z.device).repeat(b, 1)
    out, jvp = torch.func.jvp(fn, (z_rep,), (tangents,))
    out = out.reshape(b, d, -1)[:, 0]
    jac = jvp.reshape(b, d, -1).transpose(1, 2)
    return out, jac


def logdet_gram(jac: torch.Tensor) -> torch.Tensor:
    """log det(JᵀJ) for a batch of thin Jacobians (B, D, d), via a Cholesky factor of the Gram matrix.

    This is the volume change of the manifold map (M-flow paper, eq. 3): p(x) = p(u) det(JᵀJ)^(-1/2).
    Runs the fused Gram + Cholesky kernel when built (:func:`mflow_cli.kernels.logdet_gram`), else
    the plain-torch reference (``torch.linalg.cholesky`` of ``JᵀJ``).
    """
    from .kernels import logdet_gram as fused_logdet_gram

    return fused_logdet_gram(jac)


def brute_force_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Reference: one reverse-mode autograd call per point (slow; for tests only)."""
    rows = [torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], zi) for zi in z]
    return torch.stack(rows)


def reverse_mode_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The research code's way (M-flow/DNF repositories): ``fn(z)`` (B, D) and J (B, D, d) from one
    reverse-mode pass per output dimension i, batched over the points (``grad(x[:, i].sum(), z)``)."""
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        x = fn(z)
        rows = [torch.autograd.grad(x[:, i].sum(), z, retain_graph=True)[0] for i in range(x.shape[1])]
    return x.detach(), torch.stack(rows, 1)


# ---------------------------------------------------------------- forward-mode rules of mflow's flows
#
# State layout: one tensor S of shape (1 + k, B, ·); S[0] holds the values, S[1:] the k tangents of every
# row. A linear map is one matmul over all 1 + k slots and a bias added to slot 0; ReLU keeps every slot
# where the values are positive (slot 0 then becomes relu(values)), one ``threshold_backward`` call.


def _leaves(transform: T.Transform) -> list[T.Transform]:
    if isinstance(transform, T.CompositeTransform):
        return [leaf for t in transform._transforms for leaf in _leaves(t)]
    return [transform]


def _is_linear(leaf: T.Transform) -> bool:
    return isinstance(leaf, (T.IdentityTransform, T.LULinear)) or (isinstance(leaf, T.Permutation) and leaf._dim == 1)


def _keeps_rows(leaf: T.Transform) -> bool:
    """Layers that map (B, D) rows to (B, D) rows: those without a rule go through ``torch.func.jvp`` one by one."""
    return _is_linear(leaf) or isinstance(leaf, (CouplingTransform, AutoregressiveTransform))


def _affine_of(leaf: T.Transform, features: int, like: torch.Tensor, inverse: bool):
    """(A, c) with leaf(x) = x @ A + c (``inverse``: leaf.inverse) for rows x."""
    eye = torch.eye(features, dtype=like.dtype, device=like.device)
    zero = like.new_zeros(features)
    if isinstance(leaf, T.IdentityTransform):
        return eye, zero
    if isinstance(leaf, T.Permutation):
        return eye[:, leaf._inverse_permutation if inverse else leaf._permutation], zero
    lower, upper = leaf._create_lower_upper()  # W = L U, forward y = x Wᵀ + b
    if not inverse:
        weight = lower @ upper
        return weight.T, leaf.bias.to(like.dtype)
    w_inv = torch.linalg.solve_triangular(
        upper, torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True), upper=True
    )
    return w_inv.T, -(leaf.bias @ w_inv.T)


def _state_key(tensors: list[torch.Tensor]) -> tuple:
    """Changes whenever one of the tensors is written in place (optimiser step, load_state_dict) or moved."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _coupling_supported(leaf: T.Transform) -> bool:
    from .flows.fused import FusedAffineCouplingTransform, FusedRQCouplingTransform

    if not isinstance(leaf, (FusedRQCouplingTransform, FusedAffineCouplingTransform)):
        return False
    net = leaf.transform_net
    if leaf.unconditional_transform is not None or type(net) is not ResidualNet or net.context_features is not None:
        return False
    if any(b.activation is not F.relu or b.use_batch_norm for b in net.blocks):
        return False
    return not isinstance(leaf, FusedRQCouplingTransform) or leaf.tails == "linear"


def _relu(s: torch.Tensor) -> torch.Tensor:
    if s.shape[0] == 1:
        return s.relu()
    return torch.ops.aten.threshold_backward(s, s[0].expand_as(s), 0.0)


class _CouplingRule:
    """Forward-mode rule of one fused coupling step with an nflows ResidualNet conditioner: the identity half
    passes, the conditioner runs on stacked values and tangents (transposed weights cached here), and one
    kernel call returns the coupling's value and tangents."""

    def __init__(self, leaf) -> None:
        from .flows.fused import FusedRQCouplingTransform, _identity_part

        net = leaf.transform_net
        self.leaf, self.features = leaf, leaf.features
        self.blocks = list(net.blocks)
        layers = [net.initial_layer, *(lin for b in net.blocks for lin in b.linear_layers), net.final_layer]
        self.weights = [(lin.weight.T.contiguous(), lin.bias) for lin in layers]
        _identity_part(leaf, leaf.identity_features.new_zeros(1, leaf.features, dtype=torch.float))
        self.identity = leaf._identity_slice if leaf._identity_slice is not None else leaf.identity_features
        self.tidx = leaf.transform_features
        self.spline = None
        if isinstance(leaf, FusedRQCouplingTransform):
            self.spline = (leaf.num_bins, leaf.tail_bound, leaf.min_bin_width, leaf.min_bin_height,
                           leaf.min_derivative, leaf._divisor())
            self.num_transform_features = leaf.num_transform_features

    def __call__(self, s: torch.Tensor, inverse: bool, fused: bool) -> torch.Tensor:
        slots, rows = s.shape[0], s.shape[1]
        if s.shape[2] != self.features:
            raise ValueError(f"Expected features = {self.features}, got {s.shape[2]}.")
        layers = iter(self.weights)

        def linear(h: torch.Tensor) -> torch.Tensor:
            weight, bias = next(layers)
            if slots == 1:
                return torch.addmm(bias, h[0], weight)[None]
            out = (h.reshape(slots * rows, -1) @ weight).view(slots, rows, -1)
            out[0] += bias
            return out

        h = linear(s[:, :, self.identity])
        for block in self.blocks:
            if block.training and block.dropout.p > 0:
                raise RuntimeError("forward-mode Jacobian: dropout is active in a conditioner (call model.eval())")
            h = h + linear(_relu(linear(_relu(h))))
        cond = linear(h)
        x = s[0]
        if self.spline is not None:
            cond = cond.view(slots, rows, self.num_transform_features, -1)
            out, tout = kernels.rq_coupling_tangents(x, cond[0], self.tidx, s[1:], cond[1:], inverse, *self.spline,
                                                     fused=fused and self.spline[0] <= 64)
        else:
            out, tout = kernels.affine_coupling_tangents(x, cond[0], self.tidx, s[1:], cond[1:], inverse, fused=fused)
        if slots == 1:
            return out[None]
        return torch.cat([out[None], tout])


def _generic_tangents(leaf: T.Transform, s: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Any other layer: ``torch.func.jvp`` of it, the rows tiled once per tangent."""
    k, b = s.shape[0] - 1, s.shape[1]
    fn = leaf.inverse if inverse else leaf.forward
    if k == 0:
        return fn(s[0])[0][None]
    out, tout = torch.func.jvp(lambda v: fn(v)[0], (s[0].repeat(k, 1),), (s[1:].flatten(0, 1),))
    return torch.cat([out[None, :b], tout.view(k, b, -1)])


class _Plan:
    """A CompositeTransform's pass (forward or inverse) as steps: runs of linear layers folded into one
    ("affine", A, c); ("coupling", leaf) for steps with a rule; ("generic", leaf) for the rest."""

    def __init__(self, flow: T.Transform, features: int, like: torch.Tensor, inverse: bool) -> None:
        self.steps: list[tuple] = []
        leaves = _leaves(flow)
        self.covered = all(_keeps_rows(leaf) for leaf in leaves)  # else: the whole flow at once, generically
        with torch.no_grad():
            pending = None
            for leaf in reversed(leaves) if inverse else leaves:
                if _is_linear(leaf):
                    a, c = _affine_of(leaf, features, like, inverse)
                    pending = (a, c) if pending is None else (pending[0] @ a, pending[1] @ a + c)
                    continue
                if pending is not None:
                    self.steps.append(("affine", *pending))
                    pending = None
                self.steps.append(("coupling", _CouplingRule(leaf)) if _coupling_supported(leaf) else ("generic", leaf))
            if pending is not None:
                self.steps.append(("affine", *pending))


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan(flow: T.Transform, features: int, like: torch.Tensor, inverse: bool) -> _Plan:
    """The cached plan of ``flow``, rebuilt when its parameters or buffers changed since."""
    per_flow = _plans.get(flow)
    if per_flow is None:
        per_flow = _plans[flow] = {"tensors": [*flow.parameters(), *flow.buffers()]}
    key = (_state_key(per_flow["tensors"]), features, like.dtype, like.device)
    cached = per_flow.get(inverse)
    if cached is None or cached[0] != key:
        per_flow["tensors"] = [*flow.parameters(), *flow.buffers()]
        key = (_state_key(per_flow["tensors"]), features, like.dtype, like.device)
        cached = per_flow[inverse] = (key, _Plan(flow, features, like, inverse))
    return cached[1]


def flow_with_tangents(
    flow: T.Transform, x: torch.Tensor, tangents: torch.Tensor, inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``flow(x)`` (or ``flow.inverse(x)``) (B, D) and its directional derivatives (k, B, D) along
    ``tangents`` (k, B, D), by the forward-mode rule of each layer. No-grad evaluation only (the fused
    tangent kernels are not differentiable)."""
    plan = _plan(flow, x.shape[1], x, inverse)
    s = torch.cat([x[None], tangents])
    fused = kernels.tangents_fusable(s)
    if not plan.covered:
        s = _generic_tangents(flow, s, inverse)
        return s[0], s[1:]
    for step in plan.steps:
        if step[0] == "affine":
            if s.shape[0] == 1:
                s = torch.addmm(step[2], s[0], step[1])[None]
            else:
                s = s @ step[1]
                s[0] += step[2]
        elif step[0] == "coupling":
            s = step[1](s, inverse, fused)
        else:
            s = _generic_tangents(step[1], s, inverse)
    return s[0], s[1:]


def _needs_grad(flow: T.Transform, x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in flow.parameters()))


def flow_outputs(flow: T.Transform, x: torch.Tensor) -> torch.Tensor:
    """``flow(x)[0]`` without the log-det; when nothing needs grad, by the same folded plan as
    :func:`flow_with_tangents` (one matrix per run of linear layers, conditioners without module calls)."""
    if _needs_grad(flow, x):
        return flow(x)[0]
    with torch.no_grad():
        return flow_with_tangents(flow, x, x.new_empty(0, *x.shape))[0]


def decoder_jacobian(flow: T.Transform, u: torch.Tensor, features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """g(u) = flow⁻¹([u, 0]) (B, D) and its Jacobian J_g (B, D, d), for u (B, d) and D = ``features``.

    Under ``torch.no_grad()`` (or with nothing requiring grad): one inverse pass with tangents
    (:func:`flow_with_tangents`). Otherwise, so that J stays differentiable, :func:`batched_jacobian`.
    """
    b, d = u.shape

    def decode(v: torch.Tensor) -> torch.Tensor:
        return flow.inverse(torch.cat([v, v.new_zeros(v.shape[0], features - d)], 1))[0]

    if _needs_grad(flow, u):
        return batched_jacobian(decode, u)
    with torch.no_grad():
        y = torch.cat([u, u.new_zeros(b, features - d)], 1)
        tangents = torch.eye(d, features, dtype=u.dtype, device=u.device)[:, None].expand(d, b, features)
        x, t = flow_with_tangents(flow, y, tangents, inverse=True)
    return x, t.permute(1, 2, 0)
