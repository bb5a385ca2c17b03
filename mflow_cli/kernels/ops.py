"""Dispatch between the fused ops (``mflow_cli._C``) and the pure-PyTorch references.

The fused path is taken when the extension is loaded and enabled, the tensors are float32/float64
on a device the extension was built for, and the call is not one the compiled rules cannot serve:
a ``vmap``/``grad`` transform, nested ``jvp``, or forward-mode AD while reverse-mode is recording
(reverse-over-forward). Those, and everything else, go to :mod:`mflow_cli.kernels.reference`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.autograd import forward_ad

from . import reference
from ._ext import ext

_state = {"enabled": ext is not None}
_FLOATS = (torch.float32, torch.float64)


def extension_loaded() -> bool:
    """Whether ``mflow_cli._C`` was built and imported (regardless of :func:`use_reference`)."""
    return ext is not None


def fused_enabled() -> bool:
    return _state["enabled"]


@contextlib.contextmanager
def use_reference(flag: bool = True) -> Iterator[None]:
    """Force the reference path inside the block (``flag=False`` re-enables the fused one if built)."""
    old = _state["enabled"]
    _state["enabled"] = (not flag) and ext is not None
    try:
        yield
    finally:
        _state["enabled"] = old


def _transform_ok() -> bool:
    stack = torch._C._functorch.get_interpreter_stack()
    if stack:
        if len(stack) > 1 or stack[0].key() != torch._C._functorch.TransformType.Jvp:
            return False
        return not torch.is_grad_enabled()
    return not (forward_ad._current_level >= 0 and torch.is_grad_enabled())


def can_fuse(*tensors: torch.Tensor) -> bool:
    """Whether these tensors can go through the compiled kernels here and now."""
    if not _state["enabled"]:
        return False
    first = tensors[0]
    if first.dtype not in _FLOATS or any(t.dtype != first.dtype or t.device != first.device for t in tensors):
        return False
    if first.device.type != "cpu" and not (first.device.type == "cuda" and ext.with_cuda):
        return False
    if torch.is_autocast_enabled(first.device.type):  # float32/float64 kernels: autocast's ops run in PyTorch
        return False
    return _transform_ok()


def rq_coupling(
    x: torch.Tensor,
    params: torch.Tensor,
    tidx: torch.Tensor,
    inverse: bool = False,
    num_bins: int = 10,
    tail_bound: float = 1.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
    divisor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rational-quadratic spline coupling (linear tails) on features ``tidx`` of ``x`` (N, D).

    ``params`` (N, F, 3K-1): K width and K height logits (divided by ``divisor``, as nflows scales
    them by sqrt(hidden_features)) and K-1 interior derivative pre-activations. Returns the full
    (N, D) output and the log|det| (N,).
    """
    cfg = (num_bins, float(tail_bound), float(min_bin_width), float(min_bin_height), float(min_derivative),
           float(divisor))
    if num_bins <= 64 and x.dim() == 2 and can_fuse(x, params):
        from .functions import RQCouplingFn

        return RQCouplingFn.apply(x.contiguous(), params.contiguous(), tidx.contiguous(), inverse, cfg)
    return reference.rq_coupling(x, params, tidx, inverse, *cfg)


def affine_coupling(
    x: torch.Tensor, params: torch.Tensor, tidx: torch.Tensor, inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling (nflows' scale = sigmoid(u + 2) + 1e-3) on features ``tidx`` of ``x`` (N, D).

    Forward-only calls on wide rows (F >= 32 transformed features, N·F >= 16,384) take the vectorised
    PyTorch formula: there the scalar kernel is 3–7% slower (``mflow bench``, AVX-512 CPU, one thread),
    while with a backward pass the kernel stays 1.1–1.5× faster.
    """
    f = tidx.numel()
    if (_state["enabled"] and f >= 32 and x.dim() == 2 and x.shape[0] * f >= 16384 and x.device.type == "cpu"
            and not _records_grad(x, params)):
        return reference.affine_coupling(x, params, tidx, inverse)
    if x.dim() == 2 and can_fuse(x, params):
        from .functions import AffineCouplingFn

        return AffineCouplingFn.apply(x.contiguous(), params.contiguous(), tidx.contiguous(), inverse)
    return reference.affine_coupling(x, params, tidx, inverse)


def logdet_gram(jac: torch.Tensor) -> torch.Tensor:
    """log det(JᵀJ) for a batch of thin Jacobians (B, D, d), d <= 128: Gram + Cholesky in one pass.

    For d > 3 the kernel itself runs BLAS ``bmm`` + LAPACK Cholesky; a forward-only call there skips the
    autograd wrapper (``_logdet_gram_lapack``), which made the fused forward 3–13% slower than the
    reference. With a backward pass the kernel's rule (2 J (JᵀJ)⁻¹ from the factor) is 1.4–2.2× faster.
    """
    if (_state["enabled"] and jac.dim() == 3 and 3 < jac.shape[2] <= jac.shape[1] and jac.device.type == "cpu"
            and jac.dtype in _FLOATS and not _records_grad(jac)):
        return _logdet_gram_lapack(jac)
    if jac.dim() == 3 and 0 < jac.shape[2] <= min(128, jac.shape[1]) and can_fuse(jac):
        from .functions import LogdetGramFn

        logdet, _, info = LogdetGramFn.apply(jac.contiguous())
        _raise_if_singular(info)
        return logdet
    return reference.logdet_gram(jac)


def _records_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _raise_if_singular(info: torch.Tensor) -> None:
    if bool(info.any()):
        bad = int(info.nonzero()[0, 0])
        raise torch.linalg.LinAlgError(
            f"logdet_gram: the Gram matrix JᵀJ of batch element {bad} is not positive-definite"
        )


def _logdet_gram_lapack(jac: torch.Tensor) -> torch.Tensor:
    """The kernel's d > 3 branch without its autograd wrapper (forward-only calls)."""
    chol, info = torch.linalg.cholesky_ex(jac.transpose(1, 2) @ jac)
    _raise_if_singular(info)
    return 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)



def tangents_fusable(*tensors: torch.Tensor) -> bool:
    """Whether the tangent ops may take the compiled path for these tensors now (no grad recording)."""
    return not torch.is_grad_enabled() and can_fuse(*tensors)


def _rows_per_tangent(x: torch.Tensor, params: torch.Tensor, tx: torch.Tensor, tparams: torch.Tensor):
    """Rows tiled once per tangent, (k·N, ...), beside the tangents flattened to match."""
    k = tx.shape[0]
    if k == 1:
        return x, params, tx[0], tparams[0]
    tile = (k,) + (1,) * (params.dim() - 1)
    return x.repeat(k, 1), params.repeat(tile), tx.flatten(0, 1), tparams.flatten(0, 1)


def _reference_tangents(fn, x, params, tx, tparams) -> tuple[torch.Tensor, torch.Tensor]:
    if tx.shape[0] == 0:
        return fn(x, params), tx
    xr, pr, txr, tpr = _rows_per_tangent(x, params, tx, tparams)
    out, tout = torch.func.jvp(fn, (xr, pr), (txr, tpr))
    return out[: x.shape[0]], tout.reshape(tx.shape)


def rq_coupling_tangents(
    x: torch.Tensor,
    params: torch.Tensor,
    tidx: torch.Tensor,
    tx: torch.Tensor,
    tparams: torch.Tensor,
    inverse: bool = False,
    num_bins: int = 10,
    tail_bound: float = 1.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
    divisor: float = 1.0,
    fused: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output of :func:`rq_coupling` (N, D) and its k tangents (k, N, D) for input tangents ``tx`` (k, N, D)
    and parameter tangents ``tparams`` (k, N, F, 3K-1): ∂y/∂x · tx + ∂y/∂params · tparams (k may be 0).

    For no-grad evaluation (decoder Jacobians): the fused path is not differentiable. The reference path
    is ``torch.func.jvp`` of nflows' spline. ``fused``: the caller's :func:`tangents_fusable` verdict for
    these tensors (None: decide here).
    """
    cfg = (num_bins, float(tail_bound), float(min_bin_width), float(min_bin_height), float(min_derivative),
           float(divisor))
    if fused is None:
        fused = num_bins <= 64 and x.dim() == 2 and tangents_fusable(x, params, tx, tparams)
    if fused:
        x, params = x.contiguous(), params.contiguous()
        out, _ = ext.rq_forward(x, params, tidx, inverse, *cfg)
        if tx.shape[0] == 0:
            return out, tx
        xr, pr, txr, tpr = _rows_per_tangent(x, params, tx, tparams)
        tout, _ = ext.rq_jvp(xr, pr, tidx, txr.contiguous(), tpr.contiguous(), inverse, *cfg)
        return out, tout.view(tx.shape)
    return _reference_tangents(lambda a, b: reference.rq_coupling(a, b, tidx, inverse, *cfg)[0], x, params, tx,
                               tparams)


def affine_coupling_tangents(
    x: torch.Tensor, params: torch.Tensor, tidx: torch.Tensor, tx: torch.Tensor, tparams: torch.Tensor,
    inverse: bool = False, fused: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output of :func:`affine_coupling` (N, D) and its k tangents (k, N, D); ``tparams`` is (k, N, 2F)."""
    if fused is None:
        fused = x.dim() == 2 and tangents_fusable(x, params, tx, tparams)
    if fused:
        x, params = x.contiguous(), params.contiguous()
        out, _ = ext.affine_forward(x, params, tidx, inverse)
        if tx.shape[0] == 0:
            return out, tx
        xr, pr, txr, tpr = _rows_per_tangent(x, params, tx, tparams)
        tout, _ = ext.affine_jvp(xr, pr, tidx, txr.contiguous(), tpr.contiguous(), inverse)
        return out, tout.view(tx.shape)
    return _reference_tangents(lambda a, b: reference.affine_coupling(a, b, tidx, inverse)[0], x, params, tx,
                               tparams)


def _one_node_ok(*tensors: torch.Tensor) -> bool:
    """Whether a layer may run as one autograd node with a compiled backward: a gradient is being recorded, the
    tensors can take the compiled path, and no functorch transform or forward-mode AD is active (these
    Functions have no jvp rule)."""
    return (_records_grad(*tensors) and can_fuse(*tensors) and not torch._C._are_functorch_transforms_active()
            and forward_ad._current_level < 0)


def residual_net(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor | None:
    """nflows' ResidualNet (ReLU, no batch norm, no context) at ``x`` as one autograd node with a compiled
    backward (``csrc/residual_net.cpp``), for training steps; ``params`` are W0, b0, (W1, b1, W2, b2) per block,
    Wf, bf in nflows' layout. None where that path does not apply (no extension, nothing records a gradient,
    a functorch transform or forward-mode AD active): the caller runs the layers itself."""
    if not _one_node_ok(x, *params):
        return None
    from .functions import ResidualNetFn

    return ResidualNetFn.apply(x, *params)[0]


def rq_coupling_step(
    x: torch.Tensor, identity: torch.Tensor, tidx: torch.Tensor, params: list[torch.Tensor], inverse: bool,
    num_bins: int, tail_bound: float, min_bin_width: float, min_bin_height: float, min_derivative: float,
    divisor: float,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A whole RQ coupling step on rows ``x`` (N, D): nflows' ResidualNet (``params`` as in :func:`residual_net`) on
    the ``identity`` features, then the spline of :func:`rq_coupling` on ``tidx``, as one autograd node with
    compiled forward and backward, for training steps. None where that path does not apply."""
    if x.dim() != 2 or num_bins > 64 or not _one_node_ok(x, *params):
        return None
    from .functions import RQCouplingStepFn

    cfg = (num_bins, float(tail_bound), float(min_bin_width), float(min_bin_height), float(min_derivative),
           float(divisor))
    out, logdet, *_ = RQCouplingStepFn.apply(x.contiguous(), identity, tidx, inverse, cfg, *params)
    return out, logdet


def lu_linear(
    x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, unconstrained_diag: torch.Tensor, bias: torch.Tensor,
    lower_flat: torch.Tensor, upper_flat: torch.Tensor, eps: float, inverse: bool,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """nflows' LU-linear layer (W = L U, diagonal softplus(d) + eps) on rows ``x``: y = x Wᵀ + b, or the inverse,
    and log|det|, as one autograd node with a compiled backward (``csrc/lu_linear.cpp``), for training steps.
    ``lower_flat``/``upper_flat``: positions of the lower entries and of the upper entries then the diagonal in
    the flattened D×D matrix. None where that path does not apply (as :func:`residual_net`)."""
    if x.dim() != 2 or not _one_node_ok(x, lower, upper, unconstrained_diag, bias):
        return None
    from .functions import LULinearFn

    out, log_det, *_ = LULinearFn.apply(x, lower, upper, unconstrained_diag, bias, lower_flat, upper_flat, eps,
                                        inverse)
    return out, log_det


PLANAR_CHAIN_MAX_ROWS = 4096
"""Rows up to which :func:`planar_chain` runs the native chain. The chain's tanh and log are scalar calls per row
and step; over more rows PyTorch's per-step ops on whole tensors (SLEEF-vectorised) catch up (``mflow bench``, the
chain against them: 6–8× at 100 rows, 1.6–1.7× at 2,000, parity at 5,000), so beyond this the steps run one by
one."""


def planar_chain(z: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """K planar steps z_k = z_{k−1} + û_k tanh(w_kᵀz_{k−1} + b_k) and Σ_k log|det| in one native call with a compiled
    backward (``csrc/planar_chain.cpp``), for ``z`` (…, B, d) and per-input parameters ``params`` (B or 1, K, 2d + 1),
    each step's [u, w, b] as :class:`mflow_cli.flows.latent.PlanarStep` reads them, broadcast over the leading dims
    of ``z``. None where that path does not apply (no extension, not the CPU, a functorch transform or forward-mode
    AD active, more than :data:`PLANAR_CHAIN_MAX_ROWS` rows): the caller runs the steps one by one."""
    if (z.device.type != "cpu" or params.shape[0] not in (1, z.shape[-2])
            or z.numel() > PLANAR_CHAIN_MAX_ROWS * z.shape[-1]
            or not can_fuse(z, params)
            or torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0):
        return None
    from .functions import PlanarChainFn

    save = _records_grad(z, params)
    out, logdet = PlanarChainFn.apply(z.reshape(-1, z.shape[-1]).contiguous(), params.contiguous(), save)
    return out.view(z.shape), logdet.view(z.shape[:-1])


SYMMETRIC_EIGH_MAX_SIZE = 24
"""Matrix sizes n up to which :func:`symmetric_eigh` runs the native Jacobi method. Its cost grows as n³ times
the sweeps, while LAPACK's lead is its per-call overhead: on 100 random Gram matrices (one thread) the kernel took
0.09, 2.4 and 19.5 ms at n = 8, 20 and 32 against ``torch.linalg.eigh``'s 0.67, 4.6 and 9.3 ms, and was still
ahead at 24 and 28 (``mflow bench``'s polar-factor rows time it inside the Sylvester flow's Q)."""


def symmetric_eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The eigenvalues (…, n) in ascending order and the eigenvectors (…, n, n), as columns, of symmetric
    matrices ``a`` (…, n, n), as :func:`torch.linalg.eigh` returns them, by the cyclic Jacobi method over 16
    matrices at a time (``csrc/symmetric_eigh.cpp``); no autograd. None where that path does not apply (no
    extension, not the CPU, n above :data:`SYMMETRIC_EIGH_MAX_SIZE`, a functorch transform active): the caller
    runs :func:`torch.linalg.eigh`."""
    if (a.dim() < 2 or a.shape[-2] != a.shape[-1] or a.shape[-1] > SYMMETRIC_EIGH_MAX_SIZE
            or a.device.type != "cpu" or not can_fuse(a)):
        return None
    n = a.shape[-1]
    values, vectors = ext.symmetric_eigh(a.detach().reshape(-1, n, n).contiguous())
    return values.view(a.shape[:-1]), vectors.view(a.shape)


def polar_factor(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The orthonormal polar factor U = Q (QᵀQ)^{-1/2} of ``q`` (B, d, M), M ≤ d, in one native call
    (``csrc/polar_factor.cpp``), with what :func:`polar_factor_backward` reads: (U, the eigenvectors V and the
    roots s of QᵀQ's eigenvalues, P⁻¹ = V diag(1/s) Vᵀ), as :class:`mflow_cli.flows.latent.PolarFactor` computes
    them; no autograd. None where that path does not apply (no extension, not the CPU, M above
    :data:`SYMMETRIC_EIGH_MAX_SIZE`, a functorch transform active): the caller runs the PyTorch ops."""
    if (q.dim() != 3 or not 0 < q.shape[-1] <= min(q.shape[-2], SYMMETRIC_EIGH_MAX_SIZE)
            or q.device.type != "cpu" or not can_fuse(q)):
        return None
    u, basis, roots, p_inverse = ext.polar_factor_forward(q.detach().contiguous())
    return u, basis, roots, p_inverse


def polar_factor_backward(
    grad_u: torch.Tensor, u: torch.Tensor, basis: torch.Tensor, roots: torch.Tensor, p_inverse: torch.Tensor
) -> torch.Tensor | None:
    """∂L/∂Q = (G − U UᵀG) P⁻¹ + U (Y − Yᵀ), Ŷ = VᵀUᵀGV ⊘ (s_i + s_j), Y = V Ŷ Vᵀ, for the output gradient
    ``grad_u`` = G of :func:`polar_factor`, in one native call; not differentiable. None where that path does not
    apply (as for :func:`polar_factor`, and while autograd records a double backward): the caller runs the
    PyTorch ops."""
    if (u.device.type != "cpu" or u.shape[-1] > SYMMETRIC_EIGH_MAX_SIZE or torch.is_grad_enabled()
            or not can_fuse(grad_u, u, basis, roots, p_inverse)):
        return None
    return ext.polar_factor_backward(grad_u.contiguous(), u.contiguous(), basis.contiguous(), roots.contiguous(),
                                     p_inverse.contiguous())


def native_flow_available(x: torch.Tensor) -> bool:
    """Whether :func:`flow_tangents` can run a whole coupling-stack pass for ``x`` now (CPU, no grad)."""
    return x.device.type == "cpu" and tangents_fusable(x)


def flow_tangents(
    state: torch.Tensor, rows: int, inverse: bool, program: tuple[list[int], list[torch.Tensor], list[int], list[float]]
) -> torch.Tensor:
    """One pass of a coupling stack over values and tangents in one native call (``csrc/flow_tangents.cpp``).

    ``state`` is ((k + 1)·rows, D): the values, then k blocks of tangents. ``program`` is what
    :class:`mflow_cli.jacobian._Plan` compiles from the flow: step kinds (0 affine map, 1 RQ-spline coupling,
    2 affine coupling), their tensors, integers and floats, in the order ``flow_tangents.cpp`` documents.
    Call only where :func:`native_flow_available` says so; no autograd.
    """
    return ext.flow_tangents(state, rows, inverse, *program)


def flow_pass_available(x: torch.Tensor) -> bool:
    """Whether :func:`flow_pass` can run a whole pass for rows ``x`` now: float32/float64 (N, D) CPU rows, the
    extension enabled, no functorch transform and no forward-mode AD active (the node has no jvp rule)."""
    return (x.dim() == 2 and x.device.type == "cpu" and can_fuse(x) and not torch._C._are_functorch_transforms_active()
            and forward_ad._current_level < 0)


def flow_pass(
    x: torch.Tensor, inverse: bool, program: tuple[list[int], list[int], list[float], list], params: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A whole pass of a stack of permutations, LU-linear layers and RQ couplings on rows ``x`` (N, D) as one
    autograd node (``csrc/flow_pass.cpp``: one native call forward, one backward): ``(y, Σ log|det|)``.

    ``program`` is (step kinds, ints, doubles, layout) and ``params`` the float tensors it reads, in the order
    flow_pass.cpp documents (``layout``: an int i for ``params[i]``, a tensor for an index tensor;
    :func:`mflow_cli.flows.fused.flow_pass` compiles them from a flow). None where the path does not apply: no
    extension, not float32/float64 CPU rows, a functorch transform or forward-mode AD active (no jvp rule), or a
    parameter of another dtype than ``x``.
    """
    if not flow_pass_available(x) or any(t.dtype != x.dtype for t in params):
        return None
    from .functions import FlowPassFn, pass_tensors

    if not _records_grad(x, *params):  # nothing to save: the activations go as soon as the next step has run
        kinds, ints, doubles, layout = program
        y, logdet = ext.flow_pass_forward(x.contiguous(), inverse, kinds, pass_tensors(layout, params), ints,
                                          doubles, False)
        return y, logdet

    return FlowPassFn.apply(x.contiguous(), inverse, program, *params)
