"""IAF and Sylvester posterior flows: log-determinants vs autograd Jacobians (float64, per example), the
autoregressive / orthogonal structure they rely on, invertibility, tiny flow-VAEs training with each, and the
importance-weighted bound from ``log_weights`` (increasing in k, the ELBO at k = 1)."""

from __future__ import annotations

import math

import pytest
import torch

from mflow_cli.flows.latent import (
    IAFStep,
    LatentFlow,
    PolarFactor,
    SylvesterStep,
    householder_matrix,
    householder_product,
)
from mflow_cli.models.flow_vae import FlowVAE

NEW_KINDS = ["iaf", "sylvester_orthogonal", "sylvester_householder", "sylvester_triangular"]
CONTEXT = 4


def _autograd_jacobians(fn, z: torch.Tensor) -> torch.Tensor:
    """∂fn(z_i)/∂z_i (B, d, d), row by row from reverse-mode autograd; fn maps (1, d) rows of example i."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda v, i=i: fn(v[None], i)[0], z[i]) for i in range(z.shape[0])
    ])


def _flow_and_inputs(kind: str, dim: int, columns: int | None, batch: int = 6, seed: int = 0,
                     device: torch.device | str = "cpu"):
    """A 3-step flow of ``kind`` in float64 with generic (far from identity) parameters, z, params and context."""
    torch.manual_seed(seed)
    flow = LatentFlow(kind, dim, 3, context_features=CONTEXT, iaf_hidden=8, sylvester_columns=columns,
                      sylvester_reflections=2).double()
    with torch.no_grad():  # move the MADEs off their identity-like start (zero output layer)
        for p in flow.parameters():
            p.add_(0.7 * torch.randn_like(p))
    z = 1.5 * torch.randn(batch, dim, dtype=torch.float64)
    params = 1.5 * torch.randn(batch, flow.num_params, dtype=torch.float64) if flow.dynamic else None
    context = torch.randn(batch, CONTEXT, dtype=torch.float64)
    return (flow.to(device), z.to(device), None if params is None else params.to(device), context.to(device))


CASES = [("iaf", d, None) for d in (1, 2, 5)] + [
    ("sylvester_orthogonal", 1, None), ("sylvester_orthogonal", 5, 5), ("sylvester_orthogonal", 5, 3),
    ("sylvester_householder", 1, None), ("sylvester_householder", 4, None),
    ("sylvester_triangular", 1, None), ("sylvester_triangular", 4, None),
]


@pytest.mark.parametrize("kind,dim,columns", CASES)
def test_logdet_matches_autograd_jacobian(kind, dim, columns, device):
    flow, z, params, context = _flow_and_inputs(kind, dim, columns, device=device)

    def fn(v, i):
        return flow(v, None if params is None else params[i : i + 1], context[i : i + 1])[0]

    out, logdet = flow(z, params, context)
    sign, expected = torch.linalg.slogdet(_autograd_jacobians(fn, z))
    assert torch.allclose(logdet, expected, atol=1e-10, rtol=1e-10)
    assert (sign == 1).all()  # IAF: σ > 0 on a triangular diagonal; Sylvester: every 1 + r̃ r h' > 0
    assert (out - z).abs().max() > 0.1 and logdet.abs().max() > 1e-2  # a strongly non-linear, non-trivial map


def test_sylvester_flows_are_amortised_and_iaf_reads_the_context():
    for kind in NEW_KINDS[1:]:
        flow = LatentFlow(kind, 3, 2)
        assert flow.dynamic and flow.params is None and flow.num_params > 0
        with pytest.raises(ValueError, match="needs params"):
            flow(torch.randn(2, 3))
    iaf = LatentFlow("iaf", 3, 2, context_features=CONTEXT)
    assert not iaf.dynamic and iaf.num_params == 0
    z = torch.randn(5, 3)
    with torch.no_grad():
        for p in iaf.parameters():
            p.add_(torch.randn_like(p))
        a, _ = iaf(z, context=torch.randn(5, CONTEXT))
        b, _ = iaf(z, context=torch.randn(5, CONTEXT))
    assert (a - b).abs().max() > 1e-2


def test_labels_name_what_sizes_each_flow():
    """Tables tell two Sylvester flows of the same K apart by M or by the reflections (the steps' own sizes)."""
    assert LatentFlow("planar", 5, 3).label == "planar, K = 3"
    assert LatentFlow("sylvester_orthogonal", 5, 2, sylvester_columns=3).label == "sylvester_orthogonal, K = 2, M = 3"
    assert LatentFlow("sylvester_orthogonal", 5, 2).label == "sylvester_orthogonal, K = 2, M = 5"  # M = d by default
    assert (LatentFlow("sylvester_householder", 5, 2, sylvester_reflections=4).label
            == "sylvester_householder, K = 2, 4 reflections")
    assert LatentFlow("sylvester_triangular", 5, 2).label == "sylvester_triangular, K = 2"
    assert LatentFlow("none", 5, 0).label == "none"


@pytest.mark.parametrize("reverse", [False, True])
def test_iaf_step_is_autoregressive_with_gate_diagonal_and_inverts(reverse):
    """∂z'_i/∂z_j = 0 beyond the ordering, the diagonal is σ_i (Kingma et al. 2016, eq. 12); inverse(f(z)) = z."""
    torch.manual_seed(1)
    dim = 5
    step = IAFStep(dim, CONTEXT, hidden=16, reverse=reverse).double()
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.7 * torch.randn_like(p))
    z = torch.randn(4, dim, dtype=torch.float64)
    context = torch.randn(4, CONTEXT, dtype=torch.float64)
    jac = _autograd_jacobians(lambda v, i: step(v, v.new_zeros(1, 0), context[i : i + 1])[0], z)
    mask = torch.ones(dim, dim, dtype=torch.bool).triu(1)  # entries (i, j > i)
    zero_part = jac[:, mask.T] if reverse else jac[:, mask]
    assert zero_part.abs().max() == 0
    assert jac[:, ~mask & ~mask.T].abs().min() > 0  # the ordering's other side is used
    _, log_sigma = step.shift_and_gate(z, context)
    assert torch.allclose(torch.diagonal(jac, dim1=1, dim2=2), log_sigma.exp(), atol=1e-12)
    with torch.no_grad():
        out, _ = step(z, z.new_zeros(1, 0), context)
        assert torch.allclose(step.inverse(out, context), z, atol=1e-10)


def test_orthogonal_sylvester_q_is_the_polar_factor_and_householder_q_the_reflection_product():
    torch.manual_seed(2)
    ortho = SylvesterStep(6, "orthogonal", columns=4).double()
    raw = torch.randn(3, 6 * 4, dtype=torch.float64)
    q = ortho.orthonormal_columns(raw)
    assert torch.allclose(q.transpose(1, 2) @ q, torch.eye(4, dtype=torch.float64).expand(3, -1, -1), atol=1e-13)
    u, _, vh = torch.linalg.svd(raw.reshape(3, 6, 4), full_matrices=False)
    assert torch.allclose(q, u @ vh, atol=1e-12)  # Björck–Bowie converges to the orthogonal polar factor

    house = SylvesterStep(4, "householder", reflections=3).double()
    vectors = torch.randn(2, 3, 4, dtype=torch.float64)
    expected = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    for j in range(3):
        v = vectors[:, j, :, None]
        expected = expected @ (torch.eye(4, dtype=torch.float64) - 2 * v @ v.transpose(1, 2) / (v.transpose(1, 2) @ v))
    assert torch.allclose(house.orthonormal_columns(vectors.reshape(2, -1)), expected, atol=1e-13)

    even, odd = SylvesterStep(3, "triangular", index=0), SylvesterStep(3, "triangular", index=1)
    assert torch.equal(even.orthonormal_columns(torch.zeros(1, 0))[0], torch.eye(3))
    assert torch.equal(odd.orthonormal_columns(torch.zeros(1, 0))[0], torch.eye(3).flip(-1))


def _bjorck_polar_factor(q: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """The iterative procedure of van den Berg et al. (eq. 20) from Q/‖Q‖_F, differentiated by autograd."""
    q = q / q.flatten(1).norm(dim=1)[:, None, None]
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    for _ in range(steps):
        q = q @ (1.5 * eye - 0.5 * q.transpose(1, 2) @ q)
    return q


@pytest.mark.parametrize("shape", [(3, 6, 4), (2, 5, 5), (2, 4, 1)])
def test_polar_factor_matches_the_iterated_procedure_and_its_gradient(shape, device):
    """Values and vector-Jacobian products of the closed form equal the 60-step iteration's to 1e-10 (float64);
    gradcheck against finite differences; repeated singular values (a scaled orthonormal Q) are harmless."""
    torch.manual_seed(3)
    q = torch.randn(*shape, dtype=torch.float64).to(device).requires_grad_()
    cotangent = torch.randn(*shape, dtype=torch.float64).to(device)
    exact = PolarFactor.apply(q)
    (grad_exact,) = torch.autograd.grad(exact, q, cotangent)
    iterated = _bjorck_polar_factor(q)
    (grad_iterated,) = torch.autograd.grad(iterated, q, cotangent)
    assert (exact - iterated).abs().max() < 1e-12
    assert (grad_exact - grad_iterated).abs().max() < 1e-10
    assert torch.autograd.gradcheck(PolarFactor.apply, (q,), eps=1e-6, atol=1e-7)

    orthonormal = torch.linalg.qr(torch.randn(*shape, dtype=torch.float64).to(device)).Q
    tied = (3.0 * orthonormal).requires_grad_()  # every singular value 3
    (grad_tied,) = torch.autograd.grad(PolarFactor.apply(tied), tied, cotangent)
    (grad_tied_iterated,) = torch.autograd.grad(_bjorck_polar_factor(tied), tied, cotangent)
    assert torch.isfinite(grad_tied).all() and (grad_tied - grad_tied_iterated).abs().max() < 1e-10


def test_polar_factor_is_orthonormal_in_float32_for_an_ill_conditioned_q():
    """cond(Q) = 1e3: eigh of QᵀQ alone loses about cond² · eps; the Björck step after it brings UᵀU back. U is
    as close to the true polar factor as the exact (float64) decomposition of the same float32 QᵀQ gets: rounding
    QᵀQ, not decomposing it, is what limits float32 here (about 2e-3)."""
    torch.manual_seed(4)
    left = torch.linalg.qr(torch.randn(50, 40, 20)).Q
    right = torch.linalg.qr(torch.randn(50, 20, 20)).Q
    q = left @ torch.diag_embed(torch.logspace(0, -3, 20).expand(50, -1)) @ right
    u = PolarFactor.apply(q)
    assert (u.transpose(1, 2) @ u - torch.eye(20)).abs().max() < 1e-4
    expected = (left @ right).double()
    eigenvalues, basis = torch.linalg.eigh((q.transpose(1, 2) @ q).double())
    floor = q.double() @ (basis / eigenvalues.sqrt()[:, None, :]) @ basis.transpose(1, 2)
    assert (u.double() - expected).abs().max() < max((floor - expected).abs().max(), 1e-3)


def test_householder_matrix_is_the_reflection_product_with_its_gradient():
    """The compact form I − V S⁻¹ Vᵀ equals applying H_1 ⋯ H_J one by one, values and gradients (float64)."""
    torch.manual_seed(5)
    vectors = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(3, 6, 6, dtype=torch.float64)
    compact = householder_matrix(vectors)
    unit = torch.eye(6, dtype=torch.float64).expand(3, -1, -1)
    one_by_one = householder_product(unit, vectors[:, None]).transpose(1, 2)  # row c is Q e_c
    assert (compact - one_by_one).abs().max() < 1e-13
    grads = [torch.autograd.grad(m, vectors, cotangent)[0] for m in (compact, one_by_one)]
    assert (grads[0] - grads[1]).abs().max() < 1e-12


@pytest.mark.parametrize("variant", ["orthogonal", "householder", "triangular"])
def test_one_dimensional_sylvester_step_is_strictly_increasing(variant):
    """d = 1: z' = z + q r tanh(r̃ q z + b) with |r r̃| < 1 is strictly increasing for any parameters."""
    torch.manual_seed(3)
    step = SylvesterStep(1, variant, reflections=2).double()
    params = 4 * torch.randn(200, step.num_params, dtype=torch.float64)  # extreme parameters, |r|, |r̃| → 1
    z = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    out = torch.stack([step(z[:, None], p[None])[0][:, 0] for p in params])
    assert (out.diff(dim=1) > 0).all()


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("architecture", ["dense", "conv"])
def test_tiny_flow_vae_trains_with_each_new_posterior_flow(kind, architecture):
    torch.manual_seed(4)
    model = FlowVAE((1, 8, 8), latent_dim=3, posterior_flow=kind, posterior_layers=2, architecture=architecture,
                    hidden=[16], conv_channels=[2, 4], iaf_hidden=8, sylvester_columns=2, sylvester_reflections=2)
    assert model.dynamic == kind.startswith("sylvester")
    x = (torch.rand(32, 1, 8, 8) < 0.3).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    flow_weights = model.flow_head.weight if model.dynamic else model.flow.steps[0].made.final_layer.weight
    before = flow_weights.detach().clone()
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss, logs = model.loss(x, "joint")
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert all(math.isfinite(v) for v in logs.values())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert (flow_weights.detach() - before).abs().max() > 0  # the flow's amortisation / MADE weights train
    assert torch.isfinite(model.encode(x)["elbo"]).all()


@pytest.mark.parametrize("kind", ["iaf", "sylvester_orthogonal"])
def test_importance_weighted_bound_increases_with_k_and_is_the_elbo_at_k_1(kind):
    """IW_k = log (1/k) Σ_i w_i from ``log_weights`` (Burda et al. 2016): E[IW_k] is non-decreasing in k and
    E[IW_1] = ELBO. Averages over R independent replicates, tolerances from their standard errors."""
    torch.manual_seed(5)
    model = FlowVAE((1, 3, 3), latent_dim=2, posterior_flow=kind, posterior_layers=2, hidden=[8], iaf_hidden=8)
    model = model.double().eval()
    with torch.no_grad():  # a generic posterior that does not match the true one: a clear gap to close
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = (torch.rand(3, 9) < 0.5).double()
    replicates = 3000

    def iw_bound(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            log_w = model.log_weights(x, k * replicates)["log_w"].reshape(replicates, k, -1)
        iw = torch.logsumexp(log_w, 1) - math.log(k)  # (R, B)
        return iw.mean(0), iw.std(0) / math.sqrt(replicates)

    bounds = [iw_bound(k) for k in (1, 4, 32)]
    for (lo, lo_se), (hi, hi_se) in zip(bounds[:-1], bounds[1:], strict=True):
        assert (hi - lo > 4 * torch.sqrt(lo_se**2 + hi_se**2)).all()
    with torch.no_grad():
        log_w = model.log_weights(x, 20000)["log_w"]
    elbo, elbo_se = log_w.mean(0), log_w.std(0) / math.sqrt(20000)
    iw_1, iw_1_se = bounds[0]
    assert ((iw_1 - elbo).abs() < 4 * torch.sqrt(iw_1_se**2 + elbo_se**2)).all()
