"""The manifold-flow model zoo: ambient flow, PIE, M-flow, Me-flow, DNF; schedules and loss weights."""

import math

import pytest
import torch
from helpers import perturbed_manifold_flow as small

from mflow_cli.app.catalog import MODELS
from mflow_cli.models.base import standard_normal_log_prob
from mflow_cli.models.manifold_flow import ManifoldFlow

# the catalog's kinds, as constructors: the preset, then the test's own arguments


def grads(params):
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params]


def test_kinds_are_in_the_catalog():
    for kind in ("ambient_flow", "pie", "mflow", "me_flow", "dnf"):
        assert MODELS[kind].cls is ManifoldFlow


def test_ambient_flow_density_integrates_to_one_and_equals_manifold_density():
    model = small("ambient_flow")
    assert model.latent_dim == 2 and model.has_ambient_density
    axis = torch.linspace(-10, 10, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        log_p = torch.cat([model.log_prob_ambient(c) for c in grid.split(40000)])
    assert abs(float(log_p.exp().sum() * (axis[1] - axis[0]) ** 2) - 1) < 0.01
    # With d = D the "manifold" is R^D: the decoder-Jacobian density is the ambient density.
    x = torch.randn(20, 2, dtype=torch.float64)
    on_manifold, proj, _ = model.log_prob_manifold(x)
    assert torch.allclose(proj, x, atol=1e-8)
    assert torch.allclose(on_manifold, model.log_prob_ambient(x), atol=1e-7)
    # ... and equals M-flow eq. 3 with the decoder Jacobian's Gram determinant (the general path).
    from mflow_cli.jacobian import batched_jacobian, logdet_gram

    u = model.manifold_coordinates(x)
    _, jac = batched_jacobian(model.decode, u)
    assert torch.allclose(on_manifold, model.latent_log_prob(u) - 0.5 * logdet_gram(jac), atol=1e-7)
    loss, logs = model.loss(x, "joint")
    assert set(logs) == {"nll"} and abs(loss.item() + model.log_prob_ambient(x).mean().item()) < 1e-10


def test_pie_loss_is_the_ambient_likelihood_with_narrow_off_manifold_gaussian():
    model = small("pie")
    x = torch.randn(32, 2, dtype=torch.float64)
    loss, logs = model.loss(x, "joint")
    assert set(logs) == {"nll"}
    u, v, logdet = model.project(x)
    ref = -(model.latent_log_prob(u) + standard_normal_log_prob(v, 0.01) + logdet).mean()
    assert abs(float((loss - ref).detach())) < 1e-10


def test_me_flow_joint_loss_and_gradients():
    model = small("me_flow", reconstruction_weight=10.0)
    assert not model.has_ambient_density
    x = torch.randn(16, 2, dtype=torch.float64)
    loss, logs = model.loss(x, "joint")
    u = model.encoder(x)
    log_p, _, u_enc = model.log_prob_manifold(x)
    assert torch.allclose(u_enc, u)
    ref = 10.0 * (model.decode(u) - x).pow(2).mean() - log_p.mean()
    assert abs(float((loss - ref).detach())) < 1e-9 and set(logs) == {"mse", "nll"}
    loss.backward()
    for part in (model.encoder, model.outer, model.inner):
        assert any(grads(part.parameters()))
    # The gradient through the forward-mode Jacobian (reverse-over-forward) matches finite differences.
    p = next(q for q in model.outer.parameters() if q.grad is not None and q.grad.abs().sum() > 0)
    idx = p.grad.abs().argmax()
    h = 1e-6
    with torch.no_grad():
        p.view(-1)[idx] += h
        up = model.loss(x, "joint")[0]
        p.view(-1)[idx] -= 2 * h
        down = model.loss(x, "joint")[0]
        p.view(-1)[idx] += h
    analytic = float(p.grad.view(-1)[idx])
    assert abs(float((up - down) / (2 * h)) - analytic) < 1e-4 * max(1.0, abs(analytic))


@pytest.mark.parametrize("cls", ["me_flow", "dnf"])
def test_sequential_phases_train_disjoint_parameters(cls):
    model = small(cls, schedule="sequential")
    assert model.phases() == ["manifold", "density"]
    x = torch.randn(16, 2, dtype=torch.float64)
    manifold_params = list(model.phase_parameters("manifold"))
    model.loss(x, "manifold")[0].backward()
    assert all(p.grad is None for p in model.inner.parameters())
    assert any(grads(manifold_params))
    model.zero_grad(set_to_none=True)
    model.loss(x, "density")[0].backward()
    assert all(p.grad is None for p in manifold_params)
    assert any(grads(model.inner.parameters()))


def test_alternating_schedule_alternates_manifold_and_density_steps():
    model = small("mflow", schedule="alternating")
    assert model.phases() == ["alternating"]
    x = torch.randn(16, 2, dtype=torch.float64)
    seen = []
    for _ in range(4):
        model.zero_grad(set_to_none=True)
        loss, logs = model.loss(x, "alternating")
        loss.backward()
        seen.append(("mse" in logs, any(grads(model.outer.parameters())), any(grads(model.inner.parameters()))))
    assert seen == [(True, True, False), (False, False, True)] * 2


def test_loss_weights():
    x = torch.randn(16, 2, dtype=torch.float64)
    base = small("dnf", noise_std=0.0)
    torch.manual_seed(1)
    l0, logs = base.loss(x, "joint")
    assert abs(l0.item() - (logs["mse"] + logs["nll"])) < 1e-9
    weighted = small("dnf", noise_std=0.0, nll_weight=0.5, reconstruction_weight=3.0, latent_l2_weight=0.1)
    l1, logs1 = weighted.loss(x, "joint")
    u, v, _ = weighted.project(x)
    l2 = torch.cat([u, v], 1).pow(2).sum(1).mean()
    assert abs(l1.item() - (3.0 * logs1["mse"] + 0.5 * logs1["nll"] + 0.1 * l2.item())) < 1e-9


def test_every_kind_samples_and_encodes():
    for cls in ("ambient_flow", "pie", "mflow", "me_flow", "dnf"):
        model = small(cls)
        torch.manual_seed(0)
        s = model.sample(7)
        assert s.shape == (7, 2) and torch.isfinite(s).all()
        out = model.encode(torch.randn(5, 2, dtype=torch.float64))
        assert out["latents"].shape == (5, model.latent_dim)
        assert torch.isfinite(out["log_prob"]).all()
        assert ("log_prob_ambient" in out) == model.has_ambient_density
        assert math.isfinite(float(model.loss(torch.randn(8, 2, dtype=torch.float64), model.phases()[0])[0].item()))
