"""Jacobians of decoders R^d -> R^D for many points at once, and log det(JᵀJ).

The research code built J with one reverse-mode autograd call per output dimension. Two faster ways here:

- :func:`decoder_jacobian`, for the manifold flows' decoder g(u) = f⁻¹([u, 0]) with f an nflows
  ``CompositeTransform`` of mflow's layers: one inverse pass that carries the d tangents of every point
  along with its value, by the forward-mode rule of each layer written out (no ``torch.func`` on the hot
  path). Runs of linear layers (permutations, LU) fold into one cached affine map; a coupling step passes
  its identity half, pushes the tangents through the conditioner MLP by hand (linear layers, ReLU masks)
  and hands value and tangents of the spline/affine map to one kernel call
  (:func:`mflow_cli.kernels.rq_coupling_tangents`). On the CPU with the extension built, the whole pass
  (every folded map, conditioner and spline) is one native call, :func:`mflow_cli.kernels.flow_tangents`,
  compiled from the same plan. Layers without a rule go through ``torch.func.jvp``.
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
from .flows.fused import flow_leaves


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
# State layout: one tensor S of shape (1 + k, B, D + 1); S[0] holds the values, S[1:] the k tangents of
# every row, and the last column is a homogeneous coordinate (1 in the values, 0 in the tangents). Every
# linear map, bias included, is then one matmul over all slots (the bias as the matrix's last row, which
# the tangents' 0 switches off), and ReLU is one ``threshold_backward`` that keeps every slot where the
# values are positive (slot 0 becomes relu(values); the coordinate, 1, passes).


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
    return torch.ops.aten.threshold_backward(s, s[:1], 0.0)


def _homogeneous(linear: torch.nn.Linear, keep_one: bool | None) -> torch.Tensor:
    """[[Wᵀ, 0], [b, 1 or 0]] (in + 1, out + 1), or [[Wᵀ], [b]] (in + 1, out) when ``keep_one`` is None."""
    w, bias = linear.weight, linear.bias
    cols = w.shape[0] + (keep_one is not None)
    m = w.new_zeros(w.shape[1] + 1, cols)
    m[:-1, : w.shape[0]] = w.T
    m[-1, : w.shape[0]] = bias
    if keep_one:
        m[-1, -1] = 1
    return m


def _positions(idx: list[int]) -> slice | torch.Tensor:
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    if step > 0 and idx == list(range(idx[0], idx[-1] + 1, step)):
        return slice(idx[0], idx[-1] + 1, step)
    return torch.tensor(idx)


class _CouplingRule:
    """Forward-mode rule of one fused coupling step with an nflows ResidualNet conditioner: the identity half
    passes, the conditioner runs on the stacked values and tangents (homogeneous weight matrices cached
    here), and one kernel call returns the coupling's value and tangents."""

    def __init__(self, leaf) -> None:
        from .flows.fused import FusedRQCouplingTransform

        net = leaf.transform_net
        self.features = leaf.features
        self.initial = _homogeneous(net.initial_layer, True)
        self.block_weights = [(_homogeneous(b.linear_layers[0], True), _homogeneous(b.linear_layers[1], False))
                              for b in net.blocks]
        self.final = _homogeneous(net.final_layer, None)
        self.identity = _positions([*leaf.identity_features.tolist(), leaf.features])  # with the coordinate
        self.tidx = leaf.transform_features
        self.spline = None
        if isinstance(leaf, FusedRQCouplingTransform):
            self.spline = leaf.spline_config()
            self.num_transform_features = leaf.num_transform_features
        linears = [net.initial_layer, *(lin for b in net.blocks for lin in b.linear_layers)]
        final_w, final_b = net.final_layer.weight.T, net.final_layer.bias
        pad = -final_w.shape[1] % 16  # zero columns: a product 16 wide is about twice as fast as one 14 wide
        self.native_tensors = [leaf.identity_features, leaf.transform_features,
                               *(t for lin in linears for t in (lin.weight.T.contiguous(), lin.bias)),
                               F.pad(final_w, (0, pad)), F.pad(final_b, (0, pad))]
        self.native_ints = [len(net.blocks)] + ([leaf.num_bins] if self.spline else [])
        self.native_doubles = [float(v) for v in self.spline[1:]] if self.spline else []

    def __call__(self, s: torch.Tensor, inverse: bool, fused: bool) -> torch.Tensor:
        slots, rows = s.shape[0], s.shape[1]
        if s.shape[2] != self.features + 1:
            raise ValueError(f"Expected features = {self.features}, got {s.shape[2] - 1}.")
        ident = self.identity
        h = (s[:, :, ident] if isinstance(ident, slice) else s.index_select(2, ident)) @ self.initial
        for first, second in self.block_weights:
            h = h + _relu(_relu(h) @ first) @ second
        cond = h @ self.final
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
    """Any other layer: ``torch.func.jvp`` of it, the rows tiled once per tangent (coordinate column kept)."""
    k, b = s.shape[0] - 1, s.shape[1]
    fn = leaf.inverse if inverse else leaf.forward
    v, coordinate = s[..., :-1], s[..., -1:]
    if k == 0:
        out = fn(v[0])[0][None]
    else:
        out, tout = torch.func.jvp(lambda z: fn(z)[0], (v[0].repeat(k, 1),), (v[1:].flatten(0, 1),))
        out = torch.cat([out[None, :b], tout.view(k, b, -1)])
    return torch.cat([out, coordinate], -1)


class _Plan:
    """A CompositeTransform's pass (forward or inverse) as steps: runs of linear layers folded into one
    ("affine", [[A, 0], [c, 1]]); ("coupling", rule) for steps with a rule; ("generic", leaf) for the rest.

    ``native``: the same steps as a program for :func:`mflow_cli.kernels.flow_tangents` (the whole pass in one
    native call), when every step has a rule and the flow lives on the CPU; else None."""

    def __init__(self, flow: T.Transform, features: int, like: torch.Tensor, inverse: bool) -> None:
        self.steps: list[tuple] = []
        leaves = flow_leaves(flow)
        self.covered = all(_keeps_rows(leaf) for leaf in leaves)  # else: the whole flow at once, generically
        self.dropouts = [b.dropout for leaf in leaves if _coupling_supported(leaf) for b in leaf.transform_net.blocks
                         if b.dropout.p > 0]
        with torch.no_grad():
            pending = None
            for leaf in reversed(leaves) if inverse else leaves:
                if _is_linear(leaf):
                    a, c = _affine_of(leaf, features, like, inverse)
                    m = like.new_zeros(features + 1, features + 1)
                    m[:-1, :-1], m[-1, :-1], m[-1, -1] = a, c, 1
                    pending = m if pending is None else pending @ m
                    continue
                if pending is not None:
                    self.steps.append(("affine", pending))
                    pending = None
                self.steps.append(("coupling", _CouplingRule(leaf)) if _coupling_supported(leaf) else ("generic", leaf))
            if pending is not None:
                self.steps.append(("affine", pending))
            self.native = self._program(like) if self.covered and like.device.type == "cpu" else None

    def _program(self, like: torch.Tensor) -> tuple[list[int], list[torch.Tensor], list[int], list[float]] | None:
        kinds, tensors, ints, doubles = [], [], [], []
        for kind, step in self.steps:
            if kind == "generic":
                return None
            if kind == "affine":
                kinds.append(0)
                tensors += [step[:-1, :-1].contiguous(), step[-1, :-1].contiguous()]
                continue
            kinds.append(1 if step.spline else 2)
            tensors += [t if t.dtype == torch.long else t.detach().to(like.dtype).contiguous()
                        for t in step.native_tensors]
            ints += step.native_ints
            doubles += step.native_doubles
        return kinds, tensors, ints, doubles


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
    flow: T.Transform, x: torch.Tensor, tangents: torch.Tensor, inverse: bool = False, whole_pass: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``flow(x)`` (or ``flow.inverse(x)``) (B, D) and its directional derivatives (k, B, D) along
    ``tangents`` (k, B, D), by the forward-mode rule of each layer. No-grad evaluation only (the fused
    tangent kernels are not differentiable). ``whole_pass=False`` runs the plan step by step in Python even
    where one native call could run it (the path CUDA tensors take; ``mflow bench`` compares the two)."""
    plan = _plan(flow, x.shape[1], x, inverse)
    slots, rows = tangents.shape[0] + 1, x.shape[0]
    if whole_pass and plan.native is not None and rows > 0 and kernels.native_flow_available(x) and not any(
            d.training for d in plan.dropouts):  # the whole pass in one native call
        state = torch.cat([x[None], tangents.to(x.dtype)]).view(slots * rows, -1)
        out = kernels.flow_tangents(state, rows, inverse, plan.native).view(slots, rows, -1)
        return out[0], out[1:]
    s = x.new_zeros(slots, rows, x.shape[1] + 1)
    s[0, :, :-1] = x
    s[1:, :, :-1] = tangents
    s[0, :, -1] = 1
    if not plan.covered or any(d.training for d in plan.dropouts):  # active dropout: the flow's own sampling
        s = _generic_tangents(flow, s, inverse)
        return s[0, :, :-1], s[1:, :, :-1]
    fused = kernels.tangents_fusable(s)
    for step in plan.steps:
        if step[0] == "affine":
            s = s @ step[1]
        elif step[0] == "coupling":
            s = step[1](s, inverse, fused)
        else:
            s = _generic_tangents(step[1], s, inverse)
    return s[0, :, :-1], s[1:, :, :-1]


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
