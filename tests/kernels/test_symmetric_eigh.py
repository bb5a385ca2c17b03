"""The batched Jacobi eigendecomposition (``csrc/symmetric_eigh.cpp``): eigenvalues against float64 LAPACK, the
decomposition's residual and orthogonality, batches that do not fill the last group of 16, repeated and zero
eigenvalues, the size rule, and the orthogonal Sylvester flow's polar factor on it and on LAPACK."""

from __future__ import annotations

import pytest
import torch

from mflow_cli import kernels
from mflow_cli.flows.latent import PolarFactor

needs_ext = pytest.mark.skipif(
    not kernels.extension_loaded(), reason=f"mflow_cli._C not built/loaded: {kernels.backend_info()}"
)


def _symmetric(batch: int, n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    a = torch.randn(batch, n, n, dtype=torch.float64)
    return (a + a.transpose(1, 2)).to(dtype)


def _check_decomposition(a: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor, tolerance: float,
                         orthogonality: float | None = None) -> None:
    """Ascending eigenvalues equal to float64 LAPACK's and A = V Λ Vᵀ, to ``tolerance`` · ‖A‖; VᵀV = I to
    ``orthogonality`` (default ``tolerance``)."""
    scale = a.double().flatten(1).norm(dim=1).clamp_min(1e-300)[:, None]
    reference = torch.linalg.eigvalsh(a.double())
    assert (values[:, 1:] >= values[:, :-1]).all()
    assert ((values.double() - reference).abs() / scale).max() < tolerance
    residual = vectors @ torch.diag_embed(values) @ vectors.transpose(1, 2) - a
    assert (residual.double().flatten(1).abs().amax(1) / scale[:, 0]).max() < tolerance
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    assert (vectors.transpose(1, 2) @ vectors - eye).abs().max() < (orthogonality or tolerance)


@needs_ext
@pytest.mark.parametrize("n", [1, 2, 3, 8, 20, 24])
@pytest.mark.parametrize("batch", [1, 15, 16, 17, 100])
def test_jacobi_decomposes_symmetric_matrices_as_lapack_does_in_float64(n, batch):
    a = _symmetric(batch, n, torch.float64, seed=n + batch)
    values, vectors = kernels.symmetric_eigh(a)
    _check_decomposition(a, values, vectors, 1e-13)


@needs_ext
@pytest.mark.parametrize("n", [8, 20])
def test_jacobi_in_float32_is_accurate_to_its_rounding(n):
    """Eigenvalues and residual to about 10 eps · ‖A‖; VᵀV = I to about n · eps (each of the n² / 2 rotations of
    a sweep rounds V's columns: 2–3 times LAPACK's 1.5e-6 at n = 20)."""
    a = _symmetric(40, n, torch.float32)
    values, vectors = kernels.symmetric_eigh(a)
    assert values.dtype == vectors.dtype == torch.float32
    _check_decomposition(a, values, vectors, 2e-6, orthogonality=n * torch.finfo(torch.float32).eps * 4)


@needs_ext
def test_jacobi_handles_repeated_zero_and_diagonal_spectra():
    """A matrix with a tripled eigenvalue, the zero matrix and a diagonal one (no rotation: exact) in one batch."""
    torch.manual_seed(2)
    basis = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64)).Q
    repeated = basis @ torch.diag(torch.tensor([2.0, 2.0, 2.0, -1.0, 0.5, 0.0], dtype=torch.float64)) @ basis.T
    diagonal = torch.diag(torch.tensor([3.0, -2.0, 1e-30, 7.0, 0.0, 1.0], dtype=torch.float64))
    a = torch.stack([repeated, torch.zeros(6, 6, dtype=torch.float64), diagonal])
    values, vectors = kernels.symmetric_eigh(a)
    _check_decomposition(a, values, vectors, 1e-14)
    assert torch.equal(values[1], torch.zeros(6, dtype=torch.float64))
    assert torch.equal(values[2], torch.tensor([-2.0, 0.0, 1e-30, 1.0, 3.0, 7.0], dtype=torch.float64))


@needs_ext
def test_the_size_rule_and_leading_dimensions():
    """Leading dims are kept; above ``SYMMETRIC_EIGH_MAX_SIZE``, off the fused path, with an integer tensor or
    non-square matrices the caller gets None and runs torch.linalg.eigh."""
    a = _symmetric(12, 5, torch.float64).view(3, 4, 5, 5)
    values, vectors = kernels.symmetric_eigh(a)
    assert values.shape == (3, 4, 5) and vectors.shape == (3, 4, 5, 5)
    assert torch.allclose(values, torch.linalg.eigvalsh(a), atol=1e-12)
    size = kernels.ops.SYMMETRIC_EIGH_MAX_SIZE
    assert kernels.symmetric_eigh(_symmetric(2, size + 1, torch.float64)) is None
    assert kernels.symmetric_eigh(_symmetric(2, size, torch.float64)) is not None
    with kernels.use_reference():
        assert kernels.symmetric_eigh(a) is None
    assert kernels.symmetric_eigh(torch.ones(2, 3, 3, dtype=torch.int64)) is None
    assert kernels.symmetric_eigh(torch.ones(3, 6, 3, dtype=torch.float64)) is None  # not square


@needs_ext
@pytest.mark.parametrize("columns", [1, 8, 20])
def test_polar_factor_on_jacobi_equals_it_on_lapack(columns):
    """The orthogonal Sylvester flow's Q (and its gradient) from the Jacobi kernel and from torch.linalg.eigh agree
    to 1e-12 in float64."""
    torch.manual_seed(columns)
    q = torch.randn(17, 40, columns, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(17, 40, columns, dtype=torch.float64)
    outputs = []
    for reference in (False, True):
        with kernels.use_reference(reference):
            u = PolarFactor.apply(q)
            outputs.append((u, *torch.autograd.grad(u, q, cotangent)))
    (u, grad), (u_lapack, grad_lapack) = outputs
    assert (u - u_lapack).abs().max() < 1e-12 and (grad - grad_lapack).abs().max() < 1e-12
