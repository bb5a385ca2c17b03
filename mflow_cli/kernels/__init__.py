"""Optional compiled kernels (``csrc/``, module ``mflow_cli._C``) for the hot paths, with PyTorch fallbacks.

- :func:`rq_coupling`: rational-quadratic spline coupling (bin search, forward/inverse, log-det);
- :func:`affine_coupling`: affine coupling with its log-det;
- :func:`logdet_gram`: batched log det(JᵀJ) of thin Jacobians;
- :func:`rq_coupling_tangents`, :func:`affine_coupling_tangents`: a coupling op's value and k tangents per
  row in one call (no-grad evaluation of decoder Jacobians, :func:`mflow_cli.jacobian.decoder_jacobian`);
- :func:`flow_tangents`: a whole pass of a coupling stack (its conditioners included) over values and
  tangents in one native call (CPU);
- :func:`residual_net`, :func:`lu_linear`: nflows' ResidualNet conditioner and LU-linear layer as one autograd
  node each with a compiled backward (training steps);
- :func:`planar_chain`: a flow-VAE posterior's K planar steps as one autograd node with a compiled backward
  (CPU);
- :func:`symmetric_eigh`: eigendecompositions of a batch of small symmetric matrices, 16 at a time (CPU);
- :func:`polar_factor`, :func:`polar_factor_backward`: the orthogonal Sylvester flow's polar factor
  U = Q (QᵀQ)^{-1/2} and its gradient, one native call each, on that eigendecomposition (CPU).

The coupling ops and log det(JᵀJ) have backward and forward-mode (jvp) rules. Without the extension, or with
``MFLOW_NO_EXT=1``, or inside :func:`use_reference`, the same calls run the pure-PyTorch references
(:mod:`.reference`); the one-node ops return None there and their callers run the layers themselves.
"""

from __future__ import annotations

from ._ext import ext, load_error
from .ops import (
    affine_coupling,
    affine_coupling_tangents,
    can_fuse,
    extension_loaded,
    flow_pass,
    flow_pass_available,
    flow_tangents,
    fused_enabled,
    logdet_gram,
    lu_linear,
    native_flow_available,
    planar_chain,
    polar_factor,
    polar_factor_backward,
    residual_net,
    rq_coupling,
    rq_coupling_step,
    rq_coupling_tangents,
    symmetric_eigh,
    tangents_fusable,
    use_reference,
)

__all__ = [
    "affine_coupling", "affine_coupling_tangents", "backend_info", "can_fuse", "extension_loaded", "flow_pass",
    "flow_pass_available", "flow_tangents",
    "fused_enabled", "logdet_gram", "lu_linear", "native_flow_available", "planar_chain", "polar_factor",
    "polar_factor_backward", "residual_net", "rq_coupling",
    "rq_coupling_step", "rq_coupling_tangents", "symmetric_eigh", "tangents_fusable", "use_reference",
]


def backend_info() -> str:
    """Which implementation of the hot paths is active."""
    if ext is None:
        return f"kernels: reference PyTorch path ({load_error or 'no compiled extension built'})"
    devices = "CPU+CUDA" if ext.with_cuda else "CPU"
    if not fused_enabled():
        return f"kernels: reference PyTorch path (fused {devices} extension built but disabled)"
    return f"kernels: fused mflow_cli._C ({devices})"
