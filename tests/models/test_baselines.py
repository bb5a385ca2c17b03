"""The auto-encoder baselines: PAE density parity and normalisation, the InfoMax mutual-information bound,
and pae_spiral training through the manifold evaluator."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from mflow_cli.models.infomax_vae import InfoMaxVAE, nwj_mutual_information
from mflow_cli.models.pae import ProbabilisticAutoEncoder

warnings.filterwarnings("ignore", module="nflows")


def _perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_pae_latent_density_integrates_to_one_and_flow_round_trips():
    torch.manual_seed(0)
    pae = ProbabilisticAutoEncoder((2,), latent_dim=1, num_blocks=1, hidden_features=16).double().eval()
    _perturb(pae.inner, 0.3)
    u = torch.linspace(-15, 15, 30001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        mass = (pae.latent_log_prob(u).exp() * (u[1, 0] - u[0, 0])).sum()
        z, _ = pae.inner(u[::1000])
        back, _ = pae.inner.inverse(z)
    assert mass.item() == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(back, u[::1000], atol=1e-9)


def test_pae_manifold_density_is_latent_density_over_arc_speed():
    """log p(g(u)) = log p(u) − log|g'(u)| on a 1-D decoder manifold, against finite differences; so the
    on-manifold density integrates to 1 over arc length, as the latent density does over u."""
    torch.manual_seed(1)
    pae = ProbabilisticAutoEncoder((2,), latent_dim=1, num_blocks=1, hidden_features=16).double().eval()
    _perturb(pae, 0.2)
    u = torch.linspace(-2, 2, 41, dtype=torch.float64)[:, None]
    h = 1e-5
    with torch.no_grad():
        log_p, _ = pae.log_prob_at_latent(u)
        speed = (pae.decode(u + h) - pae.decode(u - h)).norm(dim=1) / (2 * h)
        expected = pae.latent_log_prob(u) - speed.log()
    assert torch.allclose(log_p, expected, atol=1e-6)


def test_conv_decoder_log_det_matches_brute_force_jacobian():
    torch.manual_seed(2)
    model = InfoMaxVAE((3, 8, 8), latent_dim=2, architecture="conv", channels=4, discriminator_hidden=[4]).double()
    model.eval()
    u = torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        log_p, x = model.log_prob_at_latent(u)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: model.decode(v[None])[0], u[i])  # (192, 2)
        ref = model.latent_log_prob(u[i : i + 1])[0] - 0.5 * torch.logdet(jac.T @ jac)
        assert log_p[i].item() == pytest.approx(ref.item(), abs=1e-8)
    assert torch.allclose(x, model.decode(u))


def test_nwj_bound_is_tight_at_the_optimal_critic():
    """For a correlated Gaussian pair, T* = 1 + log p(x, z)/(p(x)p(z)) makes the bound equal −½ log(1 − ρ²)."""
    torch.manual_seed(3)
    rho, n = 0.8, 400000
    x = torch.randn(n, dtype=torch.float64)
    z = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, dtype=torch.float64)

    def critic(a, b):
        log_joint = -(a**2 - 2 * rho * a * b + b**2) / (2 * (1 - rho**2)) - 0.5 * math.log(1 - rho**2)
        return 1 + log_joint + (a**2 + b**2) / 2

    estimate = nwj_mutual_information(critic(x, z), critic(x, z[torch.randperm(n)]))
    assert estimate.item() == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.03)


def test_pae_spiral_recipe_trains_and_evaluates(tmp_path):
    from mflow_cli.app.recipe import load_recipe
    from mflow_cli.app.runs import evaluate_run, train_run

    recipe = load_recipe(
        Path(__file__).resolve().parents[2] / "recipes" / "pae_spiral.yaml",
        ["threads=1", "data.n_train=300", "data.n_test=50", "model.num_blocks=1", "model.hidden_features=16",
         "train.epochs={manifold: 2, density: 2}", "evaluate.manifold_grid_points=300",
         "evaluate.ambient_grid_size=5", "evaluate.n_samples=50"],
    )
    train_run(recipe, tmp_path / "run")
    metrics = evaluate_run(tmp_path / "run")
    assert math.isfinite(metrics["test_log_likelihood_manifold"]) and math.isfinite(metrics["kl_true_model"])
    assert metrics["reconstruction_mean_squared_distance"] > 0
