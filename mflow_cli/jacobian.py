"""Jacobians of decoders R^d -> R^D for many points at once, and log det(JᵀJ).

The research code built J with one reverse-mode autograd call per output, in a Python loop. Here
all d columns of all B Jacobians come out of one forward-mode pass: each point is repeated d times,
the j-th copy carrying the tangent e_j, and ``torch.func.jvp`` pushes the whole (B·d)-row batch
through the decoder once. This works for any decoder that acts row by row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


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
