"""Fused kernels (``mflow_cli._C``) against the pure-PyTorch references (nflows' own code paths).

Tolerances. float64: fused == reference to 1e-5 (abs and rel), values and gradients, both directions.
float32: the fused result is compared with the float64 reference on the same inputs; allowed error
``F32_TOL * (1 + max|ref|)`` for values and log-dets, ``F32_GRAD_TOL * (1 + max|ref|)`` for gradients
(the inverse spline's derivatives amplify round-off, nflows' float32 path shows the same ~1e-3).

Every fused test runs with the reference functions patched to raise, so a silent fallback fails.
Without a built extension these tests skip; the ``MFLOW_NO_EXT`` test runs either way. The parity tests run on
``--device`` (``pytest --device cuda`` checks the CUDA kernels; a build without them fails there, not skips).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch
from nflows import transforms as T
from nflows.nn.nets import ResidualNet

from mflow_cli import kernels
from mflow_cli.flows.fused import FusedAffineCouplingTransform, FusedLULinear, FusedRQCouplingTransform
from mflow_cli.kernels import ops, reference

F32_TOL = 1e-4
F32_GRAD_TOL = 5e-3
TAIL = 3.0

needs_ext = pytest.mark.skipif(
    not kernels.extension_loaded(), reason=f"mflow_cli._C not built/loaded: {kernels.backend_info()}"
)


@contextlib.contextmanager
def fused_only():
    """Fail loudly if a call meant for the kernels falls back to the reference path."""

    def boom(*args, **kwargs):
        raise AssertionError("fell back to the reference path")

    saved = {n: getattr(reference, n) for n in ("rq_coupling", "affine_coupling", "logdet_gram")}
    try:
        for n in saved:
            setattr(ops.reference, n, boom)
        yield
    finally:
        for n, f in saved.items():
            setattr(ops.reference, n, f)


def _spline(k: int) -> dict:
    return dict(num_bins=k, tail_bound=TAIL, min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3,
                divisor=2.0)


def _rq_ref(x, p, tidx, inverse, k):
    c = _spline(k)
    return reference.rq_coupling(x, p, tidx, inverse, *c.values())


def _rq_fused(x, p, tidx, inverse, k):
    with fused_only():
        return kernels.rq_coupling(x, p, tidx, inverse, **_spline(k))


def _affine_fused(x, p, tidx, inverse):
    with fused_only():
        return kernels.affine_coupling(x, p, tidx, inverse)


def _logdet_fused(j):
    with fused_only():
        return kernels.logdet_gram(j)


def _rq_inputs(n: int, d: int, k: int, dtype, seed: int = 0, device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, d, generator=g, dtype=torch.float64)  # ~13% of values outside the tail bound
    tidx = torch.arange(1, d, 2) if d > 1 else torch.tensor([0])
    p = 1.5 * torch.randn(n, tidx.numel(), 3 * k - 1, generator=g, dtype=torch.float64)
    return x.to(device, dtype), p.to(device, dtype), tidx.to(device)


def _affine_inputs(n: int, d: int, dtype, seed: int = 0, device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    tidx = torch.arange(0, d, 2)
    p = torch.randn(n, 2 * tidx.numel(), generator=g, dtype=torch.float64)
    return x.to(device, dtype), p.to(device, dtype), tidx.to(device)


def _with_grads(fn, x, p, *args):
    """Outputs and the gradients of a random linear functional of them w.r.t. (x, p)."""
    x = x.detach().clone().requires_grad_()
    p = p.detach().clone().requires_grad_()
    out, ld = fn(x, p, *args)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    w_ld = torch.randn(ld.shape, generator=g, dtype=torch.float64).to(ld)
    grads = torch.autograd.grad((out * w_out).sum() + (ld * w_ld).sum(), (x, p), allow_unused=True)
    gx, gp = (torch.zeros_like(t) if g is None else g for g, t in zip(grads, (x, p), strict=True))
    return [t.detach() for t in (out, ld, gx, gp)]


def _close64(got, want):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _close32(got32, want64):
    for i, (a, b) in enumerate(zip(got32, want64, strict=True)):
        assert a.dtype == torch.float32
        tol = (F32_TOL if i < 2 else F32_GRAD_TOL) * (1 + b.abs().max().item())
        err = (a.double() - b).abs().max().item()
        assert err <= tol, f"output {i}: float32 error {err:.2e} > {tol:.2e}"


# ---------------------------------------------------------------- RQ spline coupling


@needs_ext
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("k", [5, 20])  # K <= 16 takes the SIMD path on AVX2 CPUs, K = 20 the scalar loop
@pytest.mark.parametrize("n,d", [(64, 2), (33, 9)])
def test_rq_matches_reference(n, d, k, inverse, device):
    x, p, tidx = _rq_inputs(n, d, k, torch.float64, device=device)
    want = _with_grads(_rq_ref, x, p, tidx, inverse, k)
    _close64(_with_grads(_rq_fused, x, p, tidx, inverse, k), want)
    _close32(_with_grads(_rq_fused, x.float(), p.float(), tidx, inverse, k), want)


@needs_ext
@pytest.mark.parametrize("k", [5, 20])
def test_rq_round_trip_and_logdet_sign(k, device):
    x, p, tidx = _rq_inputs(50, 6, k, torch.float64, device=device)
    y, ld = _rq_fused(x, p, tidx, False, k)
    x_back, ld_inv = _rq_fused(y, p, tidx, True, k)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-9, rtol=1e-9)
    keep = torch.tensor([i for i in range(6) if i not in tidx.tolist()])
    assert torch.equal(y[:, keep], x[:, keep])  # identity features pass through bit for bit


@needs_ext
@pytest.mark.parametrize("inverse", [False, True])
def test_rq_outside_tail_bound_is_identity(inverse, device):
    x, p, tidx = _rq_inputs(40, 4, 5, torch.float64, device=device)
    x = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(2)).to(device) < 0.5, 1.0, -1.0) * (
        TAIL + 0.1 + x.abs()
    )
    got = _with_grads(_rq_fused, x, p, tidx, inverse, 5)
    _close64(got, _with_grads(_rq_ref, x, p, tidx, inverse, 5))
    out, ld, _, gp = got
    assert torch.equal(out, x) and torch.equal(ld, torch.zeros_like(ld)) and not gp.any()


@needs_ext
@pytest.mark.parametrize("inverse", [False, True])
def test_rq_at_the_tail_bound_and_batch_of_one(inverse, device):
    x, p, tidx = _rq_inputs(1, 4, 5, torch.float64, device=device)
    x[0, 1], x[0, 3] = TAIL, -TAIL  # exactly on the bound: the spline's end knots
    _close64(_with_grads(_rq_fused, x, p, tidx, inverse, 5), _with_grads(_rq_ref, x, p, tidx, inverse, 5))


@needs_ext
def test_rq_non_contiguous_inputs(device):
    x, p, tidx = _rq_inputs(30, 12, 5, torch.float64, device=device)
    xs = x.t().contiguous().t()[:, ::2]  # column-major and strided: (30, 6)
    ps = p.transpose(0, 1).contiguous().transpose(0, 1)[:, :3]  # (30, 3, 14), not contiguous
    t3 = torch.tensor([1, 3, 5], device=device)
    assert not xs.is_contiguous() and not ps.is_contiguous()
    want = _with_grads(_rq_ref, xs.contiguous(), ps.contiguous(), t3, False, 5)
    _close64(_with_grads(_rq_fused, xs, ps, t3, False, 5), want)


@needs_ext
@pytest.mark.parametrize("inverse", [False, True])
def test_rq_gradcheck(inverse, device):
    x, p, tidx = _rq_inputs(3, 4, 4, torch.float64, seed=3, device=device)
    x = x.clamp(-2.5, 2.5).requires_grad_()  # keep finite differences away from the tail kink
    p.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: _rq_fused(a, b, tidx, inverse, 4), (x, p))


# ---------------------------------------------------------------- affine coupling


@needs_ext
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("n,d", [(1, 2), (57, 7)])
def test_affine_matches_reference(n, d, inverse, device):
    x, p, tidx = _affine_inputs(n, d, torch.float64, device=device)
    want = _with_grads(reference.affine_coupling, x, p, tidx, inverse)
    _close64(_with_grads(_affine_fused, x, p, tidx, inverse), want)
    _close32(_with_grads(_affine_fused, x.float(), p.float(), tidx, inverse), want)


@needs_ext
def test_affine_non_contiguous_and_gradcheck(device):
    x, p, tidx = _affine_inputs(8, 10, torch.float64, device=device)
    xs, ps = x[:, ::2], p.t().contiguous().t()[:, :6]  # (8, 5) strided, (8, 6) column-major
    t3 = torch.tensor([0, 2, 4], device=device)
    assert not xs.is_contiguous() and not ps.is_contiguous()
    want = _with_grads(reference.affine_coupling, xs.contiguous(), ps.contiguous(), t3, False)
    _close64(_with_grads(_affine_fused, xs, ps, t3, False), want)
    for inverse in (False, True):
        a, b = x[:3].clone().requires_grad_(), p[:3].clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda u, v, inv=inverse: _affine_fused(u, v, tidx, inv), (a, b))


# ---------------------------------------------------------------- log det(JᵀJ)


def _jac(b: int, n: int, d: int, dtype=torch.float64, seed: int = 0, device: torch.device | str = "cpu"
         ) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


def _logdet_with_grad(fn, j):
    j = j.detach().clone().requires_grad_()
    out = fn(j)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out)
    (g,) = torch.autograd.grad((out * w).sum(), j)
    return [out.detach(), g]


@needs_ext
@pytest.mark.parametrize("b,n,d", [(1, 3, 1), (17, 8, 3), (4, 40, 32), (2, 130, 128)])
def test_logdet_gram_matches_reference(b, n, d, device):
    j = _jac(b, n, d, device=device)
    want = _logdet_with_grad(reference.logdet_gram, j)
    got = _logdet_with_grad(_logdet_fused, j)
    _close64(got, want)
    got32 = _logdet_with_grad(_logdet_fused, j.float())
    for a, w, tol in zip(got32, want, (F32_TOL, F32_GRAD_TOL), strict=True):
        assert (a.double() - w).abs().max() <= tol * (1 + w.abs().max()) * max(1, d / 8)


@needs_ext
def test_logdet_gram_non_contiguous_gradcheck_and_singular(device):
    j = _jac(6, 9, 4, device=device)
    js = j.transpose(1, 2).contiguous().transpose(1, 2)
    assert not js.is_contiguous()
    _close64(_logdet_with_grad(_logdet_fused, js), _logdet_with_grad(reference.logdet_gram, j))
    a = _jac(2, 5, 3, seed=4, device=device).requires_grad_()
    assert torch.autograd.gradcheck(_logdet_fused, (a,))
    for shape in [(2, 5, 3), (2, 7, 5)]:  # the fused loops (d <= 3) and the BLAS/LAPACK branch (d > 3)
        with pytest.raises(torch.linalg.LinAlgError):
            _logdet_fused(torch.zeros(shape, dtype=torch.float64, device=device))


# ---------------------------------------------------------------- forward mode (jvp rules)


@needs_ext
@pytest.mark.parametrize("inverse", [False, True])
def test_jvp_rules_match_reference(inverse, device):
    x, p, tidx = _rq_inputs(20, 6, 5, torch.float64, device=device)
    ax, ap, atidx = _affine_inputs(20, 6, torch.float64, device=device)
    j = _jac(5, 7, 3, device=device)
    g = torch.Generator().manual_seed(5)
    cases = [
        (lambda a, b: kernels.rq_coupling(a, b, tidx, inverse, **_spline(5)), (x, p)),
        (lambda a, b: kernels.affine_coupling(a, b, atidx, inverse), (ax, ap)),
        (lambda a: kernels.logdet_gram(a), (j,)),
    ]
    for fn, primals in cases:
        tangents = tuple(torch.randn(t.shape, generator=g, dtype=t.dtype).to(t) for t in primals)
        with torch.no_grad(), fused_only():
            got = torch.func.jvp(fn, primals, tangents)
        with kernels.use_reference():
            want = torch.func.jvp(fn, primals, tangents)
        for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- drop-in coupling layers


@needs_ext
def test_fused_coupling_layers_equal_nflows_layers(device):
    torch.manual_seed(0)
    mask = torch.tensor([1, 0, 1, 0, 1])

    def net(i, o):
        return ResidualNet(i, o, hidden_features=16, num_blocks=1)

    pairs = [
        (FusedRQCouplingTransform(mask, net, num_bins=5, tails="linear", tail_bound=TAIL),
         T.PiecewiseRationalQuadraticCouplingTransform(mask, net, num_bins=5, tails="linear", tail_bound=TAIL)),
        (FusedAffineCouplingTransform(mask, net), T.AffineCouplingTransform(mask, net)),
    ]
    x = 1.5 * torch.randn(31, 5, dtype=torch.float64).to(device)
    for fused, plain in pairs:
        fused.to(device, torch.float64)
        plain.to(device, torch.float64).load_state_dict(fused.state_dict())
        for direction in ("forward", "inverse"):
            with fused_only():
                y, ld = getattr(fused, direction)(x)
            y_ref, ld_ref = getattr(plain, direction)(x)
            torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ld, ld_ref, atol=1e-5, rtol=1e-5)


@needs_ext
@pytest.mark.parametrize("d", [2, 5])
def test_fused_lu_linear_equals_nflows_lu_linear(d, device):
    """Same outputs, log-dets and parameter gradients (float64), same state_dict, round trip via the inverse."""
    torch.manual_seed(1)
    fused = FusedLULinear(d, identity_init=False).to(device, torch.float64)
    plain = T.LULinear(d, identity_init=False).to(device, torch.float64)
    assert set(fused.state_dict()) == set(plain.state_dict())
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(17, d, dtype=torch.float64).to(device)
    with fused_only():
        y, ld = fused(x)
        (y.square().sum() + ld.sum()).backward()
    y_ref, ld_ref = plain(x)
    (y_ref.square().sum() + ld_ref.sum()).backward()
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ld, ld_ref, atol=1e-12, rtol=1e-10)
    for p, q in zip(fused.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-8)
    back, ld_inv = fused.inverse(y.detach())
    torch.testing.assert_close(back, x, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(ld_inv, -ld.detach(), atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------- which path is active


def test_no_ext_env_forces_reference_path():
    code = (
        "from mflow_cli import kernels; import torch\n"
        "assert not kernels.extension_loaded() and not kernels.fused_enabled()\n"
        "x = torch.randn(4, 2, dtype=torch.float64); p = torch.randn(4, 1, 14, dtype=torch.float64)\n"
        "y, ld = kernels.rq_coupling(x, p, torch.tensor([1]), num_bins=5, tail_bound=3.0)\n"
        "assert y.shape == (4, 2) and ld.shape == (4,)\n"
        "print(kernels.backend_info())\n"
    )
    env = dict(os.environ, MFLOW_NO_EXT="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "reference PyTorch path" in res.stdout and "MFLOW_NO_EXT" in res.stdout


@needs_ext
def test_backend_info_and_use_reference():
    assert "fused mflow_cli._C" in kernels.backend_info()
    with kernels.use_reference():
        assert not kernels.fused_enabled() and "reference" in kernels.backend_info()
    assert kernels.fused_enabled()


# ---------------------------------------------------------------- mflow bench


@needs_ext
def test_bench_command_prints_every_row():
    from typer.testing import CliRunner

    from mflow_cli.app.cli import app

    res = CliRunner().invoke(app, ["bench", "--quick", "-r", "1", "-t", "1"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "fused mflow_cli._C" in res.output
    lines = res.output.splitlines()
    for kernel, size in [("rq-spline coupling", "8×2"), ("affine coupling", "8×4"), ("log det(JᵀJ)", "4×5×2"),
                         ("RQ coupling flow", "8×2"), ("planar chain (K=3)", "8×4"), ("polar factor", "5×6×3")]:
        rows = [ln for ln in lines if kernel in ln and size in ln]
        assert len(rows) == 2 and "fwd " in rows[0] and "fwd+bwd" in rows[1], rows
        cells = [c.strip() for c in rows[1].split("│") if c.strip()]
        ref_ms, fused_ms, ratio, diff = float(cells[3]), float(cells[4]), float(cells[5].rstrip("×")), float(cells[6])
        assert ref_ms > 0 and fused_ms > 0 and abs(ratio - ref_ms / fused_ms) <= 0.05 * ratio + 0.02
        assert diff < 1e-3  # float32, the two paths agree
    for task in ("DNF training step, batch 100 (", "one node per pass", "on-manifold density"):
        rows = [ln for ln in lines if task in ln]
        assert len(rows) == 1, rows
        cells = [c.strip() for c in rows[0].split("│") if c.strip()]
        base, ours, ratio, diff = (float(c.replace(",", "").rstrip("×")) for c in cells[2:6])
        assert base > 0 and ours > 0 and abs(ratio - ours / base) <= 0.05 * ratio + 0.1
        assert diff < 1e-3  # same loss / same density on both sides


def test_bench_info_names_the_active_path():
    from typer.testing import CliRunner

    from mflow_cli.app.cli import app

    res = CliRunner().invoke(app, ["bench", "--info"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert kernels.backend_info() in res.output


def test_an_extension_built_from_older_sources_is_not_used():
    """The loader checks for every op the Python side calls; a stale build means the reference path, not an
    AttributeError in the middle of a run."""
    import types

    from mflow_cli.kernels import _ext

    stale = types.ModuleType("_C")
    for op in _ext.OPS[:-2]:
        setattr(stale, op, None)
    assert _ext.missing_ops(stale) == list(_ext.OPS[-2:])
    if kernels.extension_loaded():
        assert _ext.missing_ops(_ext.ext) == []
