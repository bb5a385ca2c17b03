"""Manifold flows: invertibility, normalisation and the exact on-manifold density."""

import math

import pytest
import torch
from helpers import perturbed_manifold_flow as small

from mflow_cli.jacobian import batched_jacobian, brute_force_jacobian, logdet_gram


@pytest.mark.parametrize("cls", ["dnf", "mflow"])
def test_outer_and_inner_round_trip(cls):
    model = small(cls)
    x = torch.randn(64, 2, dtype=torch.float64)
    u, logdet = model.outer(x)
    back, logdet_inv = model.outer.inverse(u)
    assert torch.allclose(back, x, atol=1e-8)
    assert torch.allclose(logdet, -logdet_inv, atol=1e-8)
    z, _ = model.inner(u[:, :1])
    u_back, _ = model.inner.inverse(z)
    assert torch.allclose(u_back, u[:, :1], atol=1e-8)


def test_ambient_density_integrates_to_one():
    model = small("dnf", off_manifold_std=1.0)
    axis = torch.linspace(-12, 12, 481, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        log_p = torch.cat([model.log_prob_ambient(c) for c in grid.split(20000)])
    mass = float(log_p.exp().sum() * (axis[1] - axis[0]) ** 2)
    assert abs(mass - 1) < 0.01


@pytest.mark.parametrize("data_dim,latent_dim", [(2, 1), (4, 2), (5, 3)])
def test_batched_jacobian_equals_brute_force(data_dim, latent_dim):
    model = small("mflow", data_shape=(data_dim,), latent_dim=latent_dim)
    u = torch.randn(7, latent_dim, dtype=torch.float64)
    out, jac = batched_jacobian(model.decode, u)
    ref = brute_force_jacobian(model.decode, u)
    assert torch.allclose(out, model.decode(u), atol=1e-10)
    assert (jac - ref).abs().max() < 1e-5
    exact = torch.logdet(ref.transpose(1, 2) @ ref)
    assert (logdet_gram(jac) - exact).abs().max() < 1e-5


def test_manifold_density_matches_per_point_autograd():
    model = small("mflow")
    x = torch.randn(5, 2, dtype=torch.float64)
    log_p, x_proj, u = model.log_prob_manifold(x)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: model.decode(v[None])[0], u[i])
        z, logdet_h = model.inner(u[i : i + 1])
        ref = -0.5 * z.pow(2).sum() - 0.5 * math.log(2 * math.pi) + logdet_h - 0.5 * torch.logdet(jac.T @ jac)
        assert abs(float((log_p[i] - ref).detach())) < 1e-8
    # The projection lies on the learned manifold: projecting it again does not move it.
    _, again, _ = model.log_prob_manifold(x_proj)
    assert torch.allclose(again, x_proj, atol=1e-8)


def test_manifold_density_integrates_to_one_on_the_learned_curve():
    """∫ p(g(u)) |g'(u)| du over the learned 1-D manifold is the inner density's mass, i.e. 1."""
    model = small("mflow")
    z = torch.linspace(-9, 9, 20001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        u, _ = model.inner.inverse(z)  # covers the inner density's mass
        x = model.decode(u)
        log_p, _, _ = model.log_prob_manifold(x)
    arc = (x[1:] - x[:-1]).norm(dim=1)
    mass = float((0.5 * (log_p[1:].exp() + log_p[:-1].exp()) * arc).sum())
    assert abs(mass - 1) < 2e-3


def test_phases_and_losses():
    mflow = small("mflow")
    assert mflow.phases() == ["manifold", "density"]
    x = torch.randn(16, 2, dtype=torch.float64)
    # The density phase trains only the inner flow, the manifold phase only the outer flow.
    loss, _ = mflow.loss(x, "density")
    loss.backward()
    assert all(p.grad is None for p in mflow.outer.parameters())
    assert any(p.grad is not None for p in mflow.inner.parameters())
    mflow.zero_grad(set_to_none=True)
    loss, logs = mflow.loss(x, "manifold")
    loss.backward()
    assert all(p.grad is None for p in mflow.inner.parameters())
    assert set(logs) == {"mse"}
    dnf = small("dnf")
    loss, logs = dnf.loss(x, "joint")
    assert set(logs) == {"mse", "nll"} and torch.isfinite(loss)
