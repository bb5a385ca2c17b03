"""``torch.autograd.Function`` wrappers of the compiled ops: backward and forward-mode (``jvp``) rules.

The forward saves only its inputs; backward and jvp recompute the element-wise quantities in the
kernel (cheaper than storing them). ``setup_context`` is separate from ``forward`` so that the
functions also work under ``torch.func.jvp`` (used for decoder Jacobians, :mod:`mflow_cli.jacobian`).
Backward is once-differentiable: double backward and reverse-over-forward go through the reference
path (the dispatch in :mod:`mflow_cli.kernels.ops` routes them there).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._ext import ext


def _zeros_if_none(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if t is None else t.contiguous()


class _Function(torch.autograd.Function):
    """``apply`` without ``inspect.signature`` on every call (torch does that for setup_context-style
    Functions to bind defaults; ours have none). Under functorch transforms, torch's own ``apply``."""

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*args)


class _TangentFn(torch.autograd.Function):
    """Runs a compiled tangent rule from inside a ``jvp`` staticmethod.

    Under ``torch.func.jvp`` the tensors a ``jvp`` rule sees are functorch wrappers without storage;
    going through ``apply`` of this non-differentiable Function hands the kernel plain tensors.
    """

    @staticmethod
    def forward(op, *args):
        return tuple(getattr(ext, op)(*args))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("mflow fused kernels: tangents are not differentiable (use kernels.use_reference())")


class RQCouplingFn(_Function):
    """(x, params, tidx, inverse, cfg) -> (out, logabsdet); cfg = (K, tail_bound, min_w, min_h, min_d, divisor)."""

    @staticmethod
    def forward(x, params, tidx, inverse, cfg):
        return tuple(ext.rq_forward(x, params, tidx, inverse, *cfg))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, params, tidx, inverse, cfg = inputs
        ctx.save_for_backward(x, params, tidx)
        ctx.save_for_forward(x, params, tidx)
        ctx.inverse, ctx.cfg = inverse, cfg

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_ld):
        x, params, tidx = ctx.saved_tensors
        gx, gp = ext.rq_backward(x, params, tidx, g_out.contiguous(), g_ld.contiguous(), ctx.inverse, *ctx.cfg)
        return gx, gp, None, None, None

    @staticmethod
    def jvp(ctx, tx, tp, *_):
        x, params, tidx = ctx.saved_tensors
        return _TangentFn.apply(
            "rq_jvp", x, params, tidx, _zeros_if_none(tx, x), _zeros_if_none(tp, params), ctx.inverse, *ctx.cfg
        )


class AffineCouplingFn(_Function):
    """(x, params, tidx, inverse) -> (out, logabsdet); params (N, 2F) = [shift, unconstrained scale]."""

    @staticmethod
    def forward(x, params, tidx, inverse):
        return tuple(ext.affine_forward(x, params, tidx, inverse))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, params, tidx, inverse = inputs
        ctx.save_for_backward(x, params, tidx)
        ctx.save_for_forward(x, params, tidx)
        ctx.inverse = inverse

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_ld):
        x, params, tidx = ctx.saved_tensors
        gx, gp = ext.affine_backward(x, params, tidx, g_out.contiguous(), g_ld.contiguous(), ctx.inverse)
        return gx, gp, None, None

    @staticmethod
    def jvp(ctx, tx, tp, *_):
        x, params, tidx = ctx.saved_tensors
        return _TangentFn.apply(
            "affine_jvp", x, params, tidx, _zeros_if_none(tx, x), _zeros_if_none(tp, params), ctx.inverse
        )


class LogdetGramFn(_Function):
    """jac (B, D, d) -> log det(JᵀJ) (B,); d/dJ = 2 J (JᵀJ)⁻¹, d(logdet)[dJ] = 2 <J (JᵀJ)⁻¹, dJ>."""

    @staticmethod
    def forward(jac):
        logdet, chol, info = ext.logdet_gram_forward(jac)
        return logdet, chol, info

    @staticmethod
    def setup_context(ctx, inputs, output):
        (jac,) = inputs
        _, chol, _ = output
        ctx.mark_non_differentiable(chol, output[2])
        ctx.save_for_backward(jac, chol)
        ctx.save_for_forward(jac, chol)

    @staticmethod
    @once_differentiable
    def backward(ctx, g, _g_chol, _g_info):
        jac, chol = ctx.saved_tensors
        return ext.logdet_gram_backward(jac, chol, g.contiguous())

    @staticmethod
    def jvp(ctx, tjac):
        jac, chol = ctx.saved_tensors
        # J G⁻¹ = (G⁻¹ Jᵀ)ᵀ with G = L Lᵀ
        jg = torch.cholesky_solve(jac.transpose(1, 2), chol).transpose(1, 2)
        return 2.0 * (jg * tjac).sum((1, 2)), None, None


class ResidualNetFn(_Function):
    """(x, W0, b0, W1, b1, W2, b2, ..., Wf, bf) -> nflows' ResidualNet(x) (ReLU, no batch norm), one autograd
    node with a compiled backward. No forward-mode rule: the dispatch keeps functorch transforms away."""

    @staticmethod
    def forward(x, *params):
        return tuple(ext.residual_net_forward(x, list(params)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.num_params = len(inputs) - 1
        ctx.save_for_backward(*inputs, *output[1:])
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, *_):
        x, *rest = ctx.saved_tensors
        params, saved = rest[: ctx.num_params], rest[ctx.num_params :]
        grads = ext.residual_net_backward(g_out.contiguous(), x, params, saved, ctx.needs_input_grad[0])
        return tuple(grads)


class LULinearFn(_Function):
    """(x, lower, upper, unconstrained diagonal, bias, lower positions, upper positions, eps, inverse) ->
    (out, log|det|) of nflows' LU-linear layer, one autograd node with a compiled backward (``csrc/lu_linear.cpp``)."""

    @staticmethod
    def forward(x, lower, upper, diag, bias, lower_flat, upper_flat, eps, inverse):
        return tuple(ext.lu_linear_forward(x, lower, upper, diag, bias, lower_flat, upper_flat, eps, inverse))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, _, diag, bias, lower_flat, upper_flat, _, inverse = inputs
        ctx.save_for_backward(x, bias, diag, lower_flat, upper_flat, *output[2:])
        ctx.inverse = inverse
        ctx.mark_non_differentiable(*output[2:])

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_log_det, *_):
        x, bias, diag, lower_flat, upper_flat, *saved = ctx.saved_tensors
        g_out = _zeros_if_none(g_out, x)
        g_log_det = _zeros_if_none(g_log_det, x[:, 0])
        grads = ext.lu_linear_backward(g_out, g_log_det, x, bias, saved, diag, lower_flat, upper_flat, ctx.inverse)
        return (*grads, None, None, None, None)


class RQCouplingStepFn(_Function):
    """(x, identity idx, tidx, inverse, cfg, W0, b0, ..., Wf, bf) -> (out, logabsdet): a whole RQ coupling step,
    its ResidualNet conditioner on x[:, identity] and the spline on x[:, tidx], as one autograd node (the compiled
    conditioner and spline, forward and backward)."""

    @staticmethod
    def forward(x, identity, tidx, inverse, cfg, *params):
        cond, *saved = ext.residual_net_forward(x.index_select(1, identity), list(params))
        out, logdet = ext.rq_forward(x, cond.view(x.shape[0], tidx.shape[0], -1), tidx, inverse, *cfg)
        return out, logdet, cond, *saved

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, identity, tidx, inverse, cfg, *params = inputs
        ctx.save_for_backward(x, identity, tidx, *params, *output[2:])
        ctx.num_params, ctx.inverse, ctx.cfg = len(params), inverse, cfg
        ctx.mark_non_differentiable(*output[2:])

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_ld, *_):
        x, identity, tidx, *rest = ctx.saved_tensors
        params, cond, saved = rest[: ctx.num_params], rest[ctx.num_params], rest[ctx.num_params + 1 :]
        n, f = x.shape[0], tidx.shape[0]
        g_x, g_cond = ext.rq_backward(x, cond.view(n, f, -1), tidx, _zeros_if_none(g_out, x),
                                      _zeros_if_none(g_ld, x[:, 0]), ctx.inverse, *ctx.cfg)
        grads = ext.residual_net_backward(g_cond.view(n, -1), x.index_select(1, identity), params, saved, True)
        g_x.index_add_(1, identity, grads[0])
        return (g_x, None, None, None, None, *grads[1:])


def pass_tensors(layout: list, params: tuple | list) -> list[torch.Tensor]:
    """A flow_pass program's tensors from its ``layout`` (an int i for ``params[i]``, a tensor for itself)."""
    return [params[t] if isinstance(t, int) else t for t in layout]


class FlowPassFn(torch.autograd.Function):
    """(x, inverse, program, *params) -> (y, Σ log|det|): a whole pass of a stack of permutations, LU-linear layers
    and RQ couplings (``csrc/flow_pass.cpp``), one autograd node whose backward runs every step's compiled backward
    in reverse in one native call. ``program`` is (kinds, ints, doubles, layout): ``layout`` lists the program's
    tensors, an int i standing for ``params[i]`` (what gets a gradient) and a tensor for itself (index tensors).
    The steps' saved activations stay on the context, not among the outputs (a few hundred tensors otherwise go
    through autograd's output bookkeeping on every call)."""

    @staticmethod
    def forward(ctx, x, inverse, program, *params):
        kinds, ints, doubles, layout = program
        y, logdet, *saved = ext.flow_pass_forward(x, inverse, kinds, pass_tensors(layout, params), ints, doubles, True)
        ctx.save_for_backward(*params)
        ctx.step_saved, ctx.inverse, ctx.program, ctx.shape, ctx.dtype = saved, inverse, program, y.shape, y.dtype
        return y, logdet

    @staticmethod
    @once_differentiable
    def backward(ctx, g_y, g_ld):
        params = ctx.saved_tensors
        kinds, ints, doubles, layout = ctx.program
        g_y = torch.zeros(ctx.shape, dtype=ctx.dtype) if g_y is None else g_y.contiguous()
        g_ld = g_y.new_zeros(ctx.shape[0]) if g_ld is None else g_ld.contiguous()
        grads = ext.flow_pass_backward(g_y, g_ld, ctx.inverse, kinds, pass_tensors(layout, params), ints, doubles,
                                       ctx.step_saved)
        return (grads[0], None, None, *(grads[1 + i] for i, t in enumerate(layout) if isinstance(t, int)))


class PlanarChainFn(torch.autograd.Function):
    """(z, params, save) -> (z_K, Σ_k log|det|): K planar steps (``csrc/planar_chain.cpp``) as one autograd node;
    row n of ``z`` (N, d) uses row n % P of ``params`` (P, K, 2d + 1), each step's [u, w, b]. ``save``: keep each
    step's input for backward (only when a gradient will be asked for)."""

    @staticmethod
    def forward(ctx, z, params, save):
        out, logdet, *saved = ext.planar_chain_forward(z, params, save)
        ctx.save_for_backward(params, *saved)
        return out, logdet

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_ld):
        params, saved = ctx.saved_tensors
        n, d = saved.shape[0], saved.shape[2]
        g_out = saved.new_zeros(n, d) if g_out is None else g_out.contiguous()
        g_ld = saved.new_zeros(n) if g_ld is None else g_ld.contiguous()
        g_z, g_params = ext.planar_chain_backward(g_out, g_ld, saved, params)
        return g_z, g_params, None
