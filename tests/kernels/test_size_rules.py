"""The size rules of :mod:`mflow_cli.kernels.ops`: where a forward-only call takes the faster non-kernel path,
it returns what the kernel returns (float64, 1e-12) and raises the same error."""

from __future__ import annotations

import pytest
import torch

from mflow_cli import kernels

needs_ext = pytest.mark.skipif(not kernels.extension_loaded(), reason="mflow_cli._C not built")


def _kernel_value(fn, *inputs):
    """The kernel's own value: with a backward pass recorded, the rules keep the kernel."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    return [o.detach() for o in fn(*leaves)]


@needs_ext
@pytest.mark.parametrize("inverse", [False, True])
def test_wide_affine_forward_matches_the_kernel(inverse):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=gen, dtype=torch.float64)
    p = torch.randn(512, 64, generator=gen, dtype=torch.float64)
    tidx = torch.arange(0, 64, 2)

    def fn(a, b):
        return kernels.affine_coupling(a, b, tidx, inverse)

    with torch.no_grad():
        got = fn(x, p)
    for a, b in zip(got, _kernel_value(fn, x, p), strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


@needs_ext
@pytest.mark.parametrize("shape", [(16, 12, 4), (8, 64, 8), (4, 40, 32)])
def test_logdet_gram_forward_matches_the_kernel(shape):
    jac = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = kernels.logdet_gram(jac)
    (want,) = _kernel_value(lambda j: (kernels.logdet_gram(j),), jac)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    with pytest.raises(torch.linalg.LinAlgError, match="batch element 1 is not positive-definite"):
        bad = jac.clone()
        bad[1] = 0
        with torch.no_grad():
            kernels.logdet_gram(bad)
