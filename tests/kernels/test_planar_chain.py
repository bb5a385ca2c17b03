"""The fused planar chain (``csrc/planar_chain.cpp``): outputs, log-dets and every gradient equal the step-by-step
PyTorch formula (float64 to 1e-10, float32 to its rounding), gradcheck, the draws-lead broadcasting of a VAE's
importance-weighted bound, static parameters, and the path being taken at all."""

from __future__ import annotations

import pytest
import torch

from mflow_cli import kernels
from mflow_cli.flows.latent import LatentFlow, PlanarStep

needs_ext = pytest.mark.skipif(
    not kernels.extension_loaded(), reason=f"mflow_cli._C not built/loaded: {kernels.backend_info()}"
)


def _flow_and_inputs(dim: int, length: int, draws: tuple, dynamic: bool, dtype: torch.dtype, seed: int = 0):
    """A planar flow with generic parameters (far from the identity), z (*draws, 5, dim) and per-input params."""
    torch.manual_seed(seed)
    flow = LatentFlow("planar", dim, length, dynamic=dynamic).to(dtype)
    z = (1.5 * torch.randn(*draws, 5, dim, dtype=dtype)).requires_grad_()
    if dynamic:
        params = (1.5 * torch.randn(5, flow.num_params, dtype=dtype)).requires_grad_()
    else:
        with torch.no_grad():
            flow.params.copy_(1.5 * torch.randn(flow.num_params, dtype=dtype))
        params = None
    return flow, z, params


def _outputs_and_grads(flow, z, params):
    out, logdet = flow(z, params)
    weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view(out.shape)
    ld_weights = torch.linspace(0.5, 1.5, logdet.numel(), dtype=out.dtype).view(logdet.shape)
    loss = (weights * out).sum() + (logdet * ld_weights).sum()
    leaves = [z, params if params is not None else flow.params]
    return (out, logdet, *torch.autograd.grad(loss, leaves))


@needs_ext
@pytest.mark.parametrize("dim,length", [(1, 1), (5, 4), (40, 3)])
@pytest.mark.parametrize("draws", [(), (3,)])
@pytest.mark.parametrize("dynamic", [True, False])
def test_fused_chain_equals_the_step_by_step_formula_in_float64(dim, length, draws, dynamic):
    flow, z, params = _flow_and_inputs(dim, length, draws, dynamic, torch.float64)
    per_input = params if dynamic else flow.params[None]
    assert PlanarStep.chain(z, per_input.view(per_input.shape[0], length, -1)) is not None  # the fused path
    fused = _outputs_and_grads(flow, z, params)
    with kernels.use_reference():
        reference = _outputs_and_grads(flow, z, params)
    for got, want in zip(fused, reference, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-10, rtol=1e-10)
    assert (fused[0] - z).abs().max() > 0.1 and fused[1].abs().max() > 1e-2  # a non-trivial map


@needs_ext
def test_fused_chain_in_float32_agrees_to_rounding():
    flow, z, params = _flow_and_inputs(40, 8, (4,), True, torch.float32, seed=3)
    fused = _outputs_and_grads(flow, z, params)
    with kernels.use_reference():
        reference = _outputs_and_grads(flow, z, params)
    for got, want in zip(fused, reference, strict=True):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@needs_ext
@pytest.mark.parametrize("draws", [1, 3])
def test_fused_chain_gradcheck(draws):
    torch.manual_seed(1)
    z = torch.randn(draws, 2, 3, dtype=torch.float64, requires_grad=True)
    params = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)

    def chain(z, params):
        out = kernels.planar_chain(z, params)
        assert out is not None
        return out

    assert torch.autograd.gradcheck(chain, (z, params))


@needs_ext
def test_the_chain_takes_the_compiled_path_only_where_it_applies():
    params = torch.randn(5, 3, 9)
    z = torch.randn(5, 4)
    assert PlanarStep.chain(z, params) is not None
    with kernels.use_reference():
        assert PlanarStep.chain(z, params) is None
    assert PlanarStep.chain(torch.randn(3, 4), params) is None  # rows that match no parameter row
    assert PlanarStep.chain(torch.randn(10, 4), params) is None  # nor do 10 inputs with 5 parameter rows
    rows = kernels.ops.PLANAR_CHAIN_MAX_ROWS
    assert PlanarStep.chain(torch.randn(rows // 5, 5, 4), params) is not None
    assert PlanarStep.chain(torch.randn(rows // 5 + 1, 5, 4), params) is None  # the size rule: PyTorch's ops
    with torch.no_grad():  # evaluation: nothing saved, the same numbers
        out, logdet = PlanarStep.chain(z, params)
    with kernels.use_reference():
        ref_out, ref_logdet = LatentFlow("planar", 4, 3, dynamic=True)(z, params.view(5, -1))
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(logdet, ref_logdet, atol=1e-5)
