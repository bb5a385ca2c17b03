"""The native polar factor (``csrc/polar_factor.cpp``): U and ∂L/∂Q against the PyTorch path of
:class:`mflow_cli.flows.latent.PolarFactor` in float64, gradcheck, orthonormality in float32 for an ill-conditioned
Q, results independent of the thread count, and when the native path steps aside."""

from __future__ import annotations

import pytest
import torch

from mflow_cli import kernels
from mflow_cli.flows.latent import PolarFactor

needs_ext = pytest.mark.skipif(
    not kernels.extension_loaded(), reason=f"mflow_cli._C not built/loaded: {kernels.backend_info()}"
)


def _value_and_grad(q: torch.Tensor, cotangent: torch.Tensor, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = q.detach().clone().requires_grad_()
    with kernels.use_reference(reference):
        u = PolarFactor.apply(leaf)
        (grad,) = torch.autograd.grad(u, leaf, cotangent)
    return u.detach(), grad


@needs_ext
@pytest.mark.parametrize("batch, rows, columns", [(1, 1, 1), (17, 40, 1), (17, 40, 3), (100, 40, 8), (9, 20, 20),
                                                  (5, 30, 24)])
def test_native_polar_factor_and_gradient_equal_the_pytorch_path_in_float64(batch, rows, columns):
    torch.manual_seed(columns)
    q = torch.randn(batch, rows, columns, dtype=torch.float64)
    cotangent = torch.randn(batch, rows, columns, dtype=torch.float64)
    assert kernels.polar_factor(q) is not None  # the native path runs here
    u, grad = _value_and_grad(q, cotangent, reference=False)
    u_ref, grad_ref = _value_and_grad(q, cotangent, reference=True)
    assert (u - u_ref).abs().max() < 1e-12
    assert (grad - grad_ref).abs().max() < 1e-11 * max(1.0, grad_ref.abs().max().item())
    eye = torch.eye(columns, dtype=torch.float64)
    assert (u.transpose(1, 2) @ u - eye).abs().max() < 1e-13


@needs_ext
def test_native_polar_factor_passes_gradcheck_with_tied_singular_values():
    torch.manual_seed(0)
    q = torch.randn(4, 7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(PolarFactor.apply, (q,), eps=1e-6, atol=1e-7)
    # Q with two equal singular values: the backward divides by s_i + s_j, never by a gap
    basis, _ = torch.linalg.qr(torch.randn(2, 7, 3, dtype=torch.float64))
    tied = (basis * torch.tensor([2.0, 2.0, 0.5], dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(PolarFactor.apply, (tied,), eps=1e-6, atol=1e-7)


@needs_ext
def test_native_polar_factor_is_orthonormal_in_float32_for_an_ill_conditioned_q():
    """cond(Q) = 1e3 in float32: the per-matrix refinement brings UᵀU to I within the 100 eps tolerance, and U is
    as close to the float64 polar factor as the PyTorch path's float32 result is."""
    torch.manual_seed(3)
    left, _ = torch.linalg.qr(torch.randn(32, 40, 8, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(32, 8, 8, dtype=torch.float64))
    singular = torch.logspace(0, -3, 8, dtype=torch.float64)
    q64 = left @ torch.diag_embed(singular.expand(32, 8)) @ right.transpose(1, 2)
    exact = left @ right.transpose(1, 2)  # the polar factor of U Σ Wᵀ is U Wᵀ
    q = q64.float()
    u = PolarFactor.apply(q)
    with kernels.use_reference():
        u_ref = PolarFactor.apply(q)
    eye = torch.eye(8)
    assert (u.transpose(1, 2) @ u - eye).abs().max() < 2 * 100 * torch.finfo(torch.float32).eps
    error, error_ref = (u.double() - exact).abs().max(), (u_ref.double() - exact).abs().max()
    assert error < 2 * error_ref + 1e-5


@needs_ext
def test_native_polar_factor_does_not_depend_on_the_thread_count():
    torch.manual_seed(1)
    q = torch.randn(100, 40, 8)
    cotangent = torch.randn(100, 40, 8)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(_value_and_grad(q, cotangent, reference=False))
    finally:
        torch.set_num_threads(threads)
    (u1, g1), (u2, g2) = results
    assert torch.equal(u1, u2) and torch.equal(g1, g2)


@needs_ext
def test_native_polar_factor_steps_aside_where_it_does_not_apply():
    size = kernels.ops.SYMMETRIC_EIGH_MAX_SIZE
    assert kernels.polar_factor(torch.randn(2, size + 4, size + 1, dtype=torch.float64)) is None  # LAPACK's sizes
    assert kernels.polar_factor(torch.randn(2, 3, 4, dtype=torch.float64)) is None  # wider than tall
    assert kernels.polar_factor(torch.randn(3, 4, dtype=torch.float64)) is None  # not a batch
    assert kernels.polar_factor(torch.ones(2, 4, 3, dtype=torch.int64)) is None
    with kernels.use_reference():
        assert kernels.polar_factor(torch.randn(2, 4, 3)) is None
    u, basis, roots, p_inverse = kernels.polar_factor(torch.randn(2, 4, 3))
    grad = torch.randn(2, 4, 3)
    with torch.enable_grad():  # a double backward records the PyTorch ops instead
        assert kernels.polar_factor_backward(grad, u, basis, roots, p_inverse) is None
    with torch.no_grad():
        assert kernels.polar_factor_backward(grad, u, basis, roots, p_inverse) is not None


@needs_ext
def test_native_polar_factor_rejects_malformed_operands_with_a_message():
    u, basis, roots, p_inverse = kernels.ext.polar_factor_forward(torch.randn(2, 4, 3))
    with pytest.raises(RuntimeError, match="the roots"):
        kernels.ext.polar_factor_backward(torch.randn(2, 4, 3), u, basis, roots[:, :2].contiguous(), p_inverse)
    with pytest.raises(RuntimeError, match="M <= d"):
        kernels.ext.polar_factor_forward(torch.randn(2, 3, 4))
