"""The manifold flows' objectives against their formulas, written out by hand in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mflow_cli.app.catalog import MODELS
from mflow_cli.jacobian import batched_jacobian, logdet_gram
from mflow_cli.models import objectives
from mflow_cli.models.base import standard_normal_log_prob


def small(kind: str, **kw):
    torch.manual_seed(0)
    kw.setdefault("outer_layers", 2)
    model = MODELS[kind].build((3,), latent_dim=1, hidden_features=16, num_blocks=1, **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def ambient_log_prob(model, x):
    u, v, logdet = model.project(x)
    return model.latent_log_prob(u) + standard_normal_log_prob(v, model.off_manifold_std) + logdet


def test_dnf_objective_is_nll_of_the_inflated_data_plus_mse_against_the_clean_data():
    model = small("dnf", noise_std=0.3, reconstruction_weight=2.5, nll_weight=0.7)
    assert model.objective("joint") is objectives.dnf_objective
    x = torch.randn(64, 3, dtype=torch.float64)
    torch.manual_seed(11)
    loss, logs = model.loss(x, "joint")
    torch.manual_seed(11)
    noisy = x + 0.3 * torch.randn_like(x)
    u = model.project(noisy)[0]
    nll = -ambient_log_prob(model, noisy).mean()
    mse_clean = F.mse_loss(model.decode(u), x)
    assert loss.item() == pytest.approx((0.7 * nll + 2.5 * mse_clean).item(), rel=1e-12)
    assert logs["nll"] == pytest.approx(nll.item(), rel=1e-12)
    assert logs["mse"] == pytest.approx(mse_clean.item(), rel=1e-12)
    # the reconstruction target is the clean x, not the inflated x̃ (which would give another number)
    assert abs(F.mse_loss(model.decode(u), noisy).item() - mse_clean.item()) > 1e-3
    # and the NLL is of x̃, not of x
    assert abs(-ambient_log_prob(model, x).mean().item() - nll.item()) > 1e-3


def test_pie_objective_is_the_ambient_nll_without_noise_or_reconstruction():
    model = small("pie")
    assert model.objective("joint") is objectives.pie_objective
    x = torch.randn(32, 3, dtype=torch.float64)
    loss, logs = model.loss(x, "joint")
    assert set(logs) == {"nll"}
    assert loss.item() == pytest.approx(-ambient_log_prob(model, x).mean().item(), rel=1e-12)


def test_mflow_phases_are_reconstruction_then_the_inner_density():
    model = small("mflow", reconstruction_weight=10.0)
    assert model.phases() == ["manifold", "density"]
    x = torch.randn(32, 3, dtype=torch.float64)
    loss, logs = model.loss(x, "manifold")
    mse = F.mse_loss(model.decode(model.project(x)[0]), x)
    assert set(logs) == {"mse"} and loss.item() == pytest.approx(10.0 * mse.item(), rel=1e-12)
    loss, logs = model.loss(x, "density")
    u = model.project(x)[0]
    assert set(logs) == {"nll_latent"}
    assert loss.item() == pytest.approx(-model.latent_log_prob(u).mean().item(), rel=1e-12)


def test_me_flow_objective_is_reconstruction_through_the_encoder_plus_the_exact_manifold_nll():
    model = small("me_flow", encoder_hidden=8, encoder_blocks=1, reconstruction_weight=3.0)
    assert model.objective("joint") is objectives.me_flow_objective
    x = torch.randn(16, 3, dtype=torch.float64)
    loss, logs = model.loss(x, "joint")
    u = model.encoder(x)
    recon, jac = batched_jacobian(model.decode, u)
    nll = -(model.latent_log_prob(u) - 0.5 * logdet_gram(jac)).mean()
    assert loss.item() == pytest.approx((3.0 * F.mse_loss(recon, x) + nll).item(), rel=1e-10)
    assert set(logs) == {"mse", "nll"}


def test_alternating_schedule_takes_the_two_phases_in_turn():
    model = small("mflow", schedule="alternating")
    x = torch.randn(8, 3, dtype=torch.float64)
    assert [set(model.loss(x, "alternating")[1]) for _ in range(3)] == [{"mse"}, {"nll_latent"}, {"mse"}]
