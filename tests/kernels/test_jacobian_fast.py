"""The forward-mode decoder Jacobian (:func:`mflow_cli.jacobian.decoder_jacobian`) against brute force.

Tolerances. float64: 1e-10 absolute against one reverse-mode autograd call per point. float32: against the
float64 brute force on the same weights, ``F32_TOL * (1 + max|J|)`` (the inverse spline's derivatives amplify
round-off, as nflows' own float32 path does). Runs with and without the compiled kernels
(``MFLOW_NO_EXT=1`` exercises the ``torch.func`` rules of the reference spline).
"""

from __future__ import annotations

import pytest
import torch
from nflows import transforms as T

from mflow_cli import kernels
from mflow_cli.flows.builders import coupling_flow
from mflow_cli.jacobian import (
    batched_jacobian,
    brute_force_jacobian,
    decoder_jacobian,
    flow_outputs,
    flow_with_tangents,
    reverse_mode_jacobian,
)
from mflow_cli.models.manifold_flow import ManifoldFlow

F32_TOL = 2e-4


def _shake(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Move the weights off their near-identity initialisation so every term of the rules matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module.eval()


def _decode(flow, d, features):
    return lambda v: flow.inverse(torch.cat([v, v.new_zeros(v.shape[0], features - d)], 1))[0]


@pytest.mark.parametrize("kind", ["rq_coupling", "affine_coupling"])
@pytest.mark.parametrize("linear", ["lu", "permutation"])
@pytest.mark.parametrize(("d", "features"), [(1, 2), (2, 5)])
def test_float64_matches_brute_force(kind, linear, d, features):
    torch.manual_seed(0)
    flow = _shake(coupling_flow(features, 4, kind=kind, linear=linear, hidden_features=16).double())
    u = 1.5 * torch.randn(13, d, dtype=torch.float64)
    with torch.no_grad():
        x, jac = decoder_jacobian(flow, u, features)
    ref_jac = brute_force_jacobian(_decode(flow, d, features), u)
    assert jac.shape == (13, features, d)
    assert torch.allclose(x, _decode(flow, d, features)(u).detach(), atol=1e-10, rtol=0)
    assert torch.allclose(jac, ref_jac, atol=1e-10, rtol=0)
    assert float(ref_jac.abs().max()) > 0.1  # a Jacobian worth comparing


def test_float32_within_documented_tolerance():
    torch.manual_seed(1)
    model = _shake(ManifoldFlow((2,), outer_layers=9, hidden_features=32))
    u = 1.5 * torch.randn(50, 1)
    with torch.no_grad():
        _, jac = decoder_jacobian(model.outer, u, 2)
    model64 = model.double()
    ref = brute_force_jacobian(model64.decode, u.double())
    assert float((jac.double() - ref).abs().max()) <= F32_TOL * (1 + float(ref.abs().max()))


def test_log_prob_manifold_matches_the_generic_path():
    torch.manual_seed(2)
    model = _shake(ManifoldFlow((2,), outer_layers=5, hidden_features=16).double())
    x = torch.randn(20, 2, dtype=torch.float64)
    with torch.no_grad():
        log_p, proj, u = model.log_prob_manifold(x)
        u_ref = model.project(x)[0]
        proj_ref, jac_ref = batched_jacobian(model.decode, u_ref)
        from mflow_cli.jacobian import logdet_gram

        log_ref = model.latent_log_prob(u_ref) - 0.5 * logdet_gram(jac_ref)
    assert torch.allclose(u, u_ref, atol=1e-12, rtol=0)
    assert torch.allclose(proj, proj_ref, atol=1e-10, rtol=0)
    assert torch.allclose(log_p, log_ref, atol=1e-10, rtol=0)


def test_flow_outputs_match_the_flow_both_ways():
    torch.manual_seed(3)
    flow = _shake(coupling_flow(4, 3, hidden_features=16).double())
    x = torch.randn(9, 4, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(flow_outputs(flow, x), flow(x)[0], atol=1e-12, rtol=0)
        y, t = flow_with_tangents(flow, x, torch.randn(3, 9, 4, dtype=torch.float64), inverse=True)
        assert torch.allclose(y, flow.inverse(x)[0], atol=1e-12, rtol=0)
        assert t.shape == (3, 9, 4)


def test_layers_without_a_rule_go_through_torch_func():
    """An nflows autoregressive step in the middle (no hand-written rule): jvp layer by layer, same Jacobian."""
    torch.manual_seed(4)
    steps = [coupling_flow(3, 2, hidden_features=16), T.MaskedAffineAutoregressiveTransform(3, 8),
             coupling_flow(3, 1, kind="affine_coupling", hidden_features=16)]
    flow = _shake(T.CompositeTransform(steps).double())
    u = torch.randn(7, 2, dtype=torch.float64)
    with torch.no_grad():
        _, jac = decoder_jacobian(flow, u, 3)
    assert torch.allclose(jac, brute_force_jacobian(_decode(flow, 2, 3), u), atol=1e-10, rtol=0)


def test_with_grad_the_jacobian_stays_differentiable():
    torch.manual_seed(5)
    model = _shake(ManifoldFlow((2,), outer_layers=3, hidden_features=8).double()).train()
    u = torch.randn(6, 1, dtype=torch.float64, requires_grad=True)
    x, jac = decoder_jacobian(model.outer, u, 2)
    (g,) = torch.autograd.grad(jac.pow(2).sum(), u)
    _, jac_ref = batched_jacobian(model.decode, u)
    (g_ref,) = torch.autograd.grad(jac_ref.pow(2).sum(), u)
    assert torch.allclose(g, g_ref, atol=1e-10, rtol=0) and float(g.abs().max()) > 0


def test_reverse_mode_baseline_matches_brute_force():
    torch.manual_seed(6)
    model = _shake(ManifoldFlow((2,), outer_layers=3, hidden_features=8).double())
    u = torch.randn(5, 1, dtype=torch.float64)
    x, jac = reverse_mode_jacobian(model.decode, u)
    assert torch.allclose(jac, brute_force_jacobian(model.decode, u), atol=1e-12, rtol=0)
    assert torch.allclose(x, model.decode(u).detach(), atol=1e-12, rtol=0)


@pytest.mark.skipif(not kernels.extension_loaded(), reason="mflow_cli._C not built")
@pytest.mark.parametrize("op", ["rq", "affine"])
@pytest.mark.parametrize("inverse", [False, True])
def test_fused_tangent_ops_match_torch_func_on_the_reference(op, inverse):
    gen = torch.Generator().manual_seed(7)
    n, d, k = 11, 4, 3
    tidx = torch.tensor([1, 3])
    x = 1.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    tx = torch.randn(k, n, d, generator=gen, dtype=torch.float64)
    if op == "rq":
        spline = (5, 3.0, 1e-3, 1e-3, 1e-3, 2.0)
        p = torch.randn(n, 2, 14, generator=gen, dtype=torch.float64)
        tp = torch.randn(k, n, 2, 14, generator=gen, dtype=torch.float64)
        fn = lambda *a, **kw: kernels.rq_coupling_tangents(*a, *spline, **kw)  # noqa: E731
    else:
        p = torch.randn(n, 4, generator=gen, dtype=torch.float64)
        tp = torch.randn(k, n, 4, generator=gen, dtype=torch.float64)
        fn = kernels.affine_coupling_tangents
    with torch.no_grad():
        out, tout = fn(x, p, tidx, tx, tp, inverse)
        with kernels.use_reference():
            ref_out, ref_tout = fn(x, p, tidx, tx, tp, inverse)
    assert torch.allclose(out, ref_out, atol=1e-10, rtol=0)
    assert torch.allclose(tout, ref_tout, atol=1e-9, rtol=0) and float(ref_tout.abs().max()) > 0.1


def test_active_dropout_takes_the_flows_own_path():
    torch.manual_seed(8)
    flow = coupling_flow(3, 2, hidden_features=16, dropout=0.5).double().train()
    u = torch.randn(4, 1, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(9)
        x, jac = decoder_jacobian(flow, u, 3)
        torch.manual_seed(9)
        x_ref, jac_ref = batched_jacobian(_decode(flow, 1, 3), u)
    assert torch.allclose(jac, jac_ref, atol=1e-12, rtol=0) and torch.allclose(x, x_ref, atol=1e-12, rtol=0)
    flow.eval()  # dropout off: the rules again, the brute-force Jacobian
    with torch.no_grad():
        _, jac = decoder_jacobian(flow, u, 3)
    assert torch.allclose(jac, brute_force_jacobian(_decode(flow, 1, 3), u), atol=1e-10, rtol=0)


@pytest.mark.skipif(not kernels.extension_loaded(), reason="mflow_cli._C not built")
@pytest.mark.parametrize("kind", ["rq_coupling", "affine_coupling"])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize(("k", "blocks", "bins"), [(0, 2, 5), (1, 1, 5), (3, 3, 24)])
def test_a_whole_pass_in_one_native_call_matches_the_rules_step_by_step(kind, inverse, k, blocks, bins, monkeypatch):
    """The CPU fast path (``kernels.flow_tangents``: conditioners, splines and folded linear maps in one call)
    against the same plan run step by step in Python, values and tangents, float64; and it is one call."""
    torch.manual_seed(10)
    flow = _shake(coupling_flow(5, 4, kind=kind, spline_bins=bins, hidden_features=12, num_blocks=blocks).double())
    x = 1.5 * torch.randn(9, 5, dtype=torch.float64)
    tangents = torch.randn(k, 9, 5, dtype=torch.float64)
    calls = []
    native = kernels.flow_tangents
    monkeypatch.setattr(kernels, "flow_tangents", lambda *a: calls.append(1) or native(*a))
    with torch.no_grad():
        y, ty = flow_with_tangents(flow, x, tangents, inverse)
        assert len(calls) == 1
        y_ref, ty_ref = flow_with_tangents(flow, x, tangents, inverse, whole_pass=False)
        direct = (flow.inverse(x) if inverse else flow(x))[0]
    assert len(calls) == 1 and ty.shape == (k, 9, 5)
    assert torch.allclose(y, y_ref, atol=1e-12, rtol=0) and torch.allclose(y, direct, atol=1e-12, rtol=0)
    assert torch.allclose(ty, ty_ref, atol=1e-11, rtol=0)
    assert k == 0 or float(ty_ref.abs().max()) > 0.1


@pytest.mark.skipif(not kernels.extension_loaded(), reason="mflow_cli._C not built")
def test_the_native_pass_refuses_a_malformed_program():
    x = torch.randn(4, 2)
    with pytest.raises(RuntimeError, match="malformed program"):
        kernels.flow_tangents(x, 4, False, ([0], [torch.eye(2)], [], []))
    with pytest.raises(RuntimeError, match="state must be"):
        kernels.flow_tangents(x, 3, False, ([0], [torch.eye(2), torch.zeros(2)], [], []))


def test_image_decoder_jacobian_matches_brute_force():
    """The image flow (fused 4-D splines, channels-last conditioners) under torch.func.jvp: J_g in float64 against
    one reverse-mode call per point."""
    torch.manual_seed(11)
    model = _shake(ManifoldFlow((3, 4, 4), latent_dim=2, architecture="image", levels=1, outer_layers=1,
                                inner_layers=1, hidden_features=4, num_blocks=1).double(), scale=0.05)
    u = 0.5 * torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        x, jac = decoder_jacobian(model.outer, u, 48)
    ref = brute_force_jacobian(model.decode, u)
    assert torch.allclose(x, model.decode(u).detach(), atol=1e-10, rtol=0)
    assert torch.allclose(jac, ref, atol=1e-9, rtol=0) and float(ref.abs().max()) > 0.01
