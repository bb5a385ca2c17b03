"""Toy simulators on circles and spheres: true densities integrate to 1 and match their samplers."""

import math

import pytest
import torch
from scipy import stats

from mflow_cli.datasets.charts import cdf_on_grid, empirical_cdf_on_grid
from mflow_cli.datasets.circle import VonMisesCircle
from mflow_cli.datasets.sphere import SphericalGaussian, VonMisesSphereMixture, nsphere_embed


def mass(sim, n):
    _, log_p, weights = sim.manifold_grid(n)
    return float((log_p.exp() * weights).sum())


def test_circle_density_integrates_to_one_and_sampler_is_von_mises():
    sim = VonMisesCircle(n_train=20000, kappa=8.0)
    assert abs(mass(sim, 2000) - 1) < 1e-10
    x = sim.train_data().double()
    assert torch.allclose(x.norm(dim=1), torch.full((len(x),), 3.0, dtype=torch.float64), atol=1e-5)
    ks = stats.kstest(sim.angles(x)[:, 0].numpy(), stats.vonmises(8.0, loc=0.0).cdf).statistic
    assert ks < 0.012
    # The density w.r.t. arc length at data points equals the von Mises pdf / radius.
    ref = stats.vonmises(8.0).logpdf(sim.angles(x[:50])[:, 0].numpy()) - math.log(3.0)
    assert torch.allclose(sim.log_prob(x[:50]), torch.as_tensor(ref), atol=1e-5)


def test_sphere_mixture_density_integrates_to_one_and_matches_samples():
    sim = VonMisesSphereMixture(n_train=40000)
    assert abs(mass(sim, 20000) - 1) < 1e-6
    x = sim.train_data().double()
    assert (x.norm(dim=1) - 1).abs().max() < 1e-5
    grid = sim.chart_grid(60)
    true_cdf = cdf_on_grid((grid.log_p_chart.exp() * grid.cell_volume).reshape(grid.shape))
    emp_cdf = empirical_cdf_on_grid(sim.angles(x), grid.axes, grid.widths)
    assert (true_cdf - emp_cdf).abs().max() < 0.01
    # A wrong centre would be caught: shifting the data's φ by 0.2 breaks the CDF match.
    shifted = sim.angles(x) + torch.tensor([0.0, 0.2], dtype=torch.float64)
    assert (true_cdf - empirical_cdf_on_grid(shifted, grid.axes, grid.widths)).abs().max() > 0.03


@pytest.mark.parametrize("latent_dim,data_dim,cells", [(1, 3, 400), (2, 3, 120), (3, 5, 30)])
def test_spherical_gaussian_density_integrates_to_one_and_matches_moments(latent_dim, data_dim, cells):
    sim = SphericalGaussian(n_train=100000, latent_dim=latent_dim, data_dim=data_dim, epsilon=0.0)
    grid = sim.chart_grid(cells)
    p = grid.log_p_manifold().exp() * grid.manifold_weights()
    assert abs(float(p.sum()) - 1) < 2e-3
    x = sim.train_data().double()
    assert x.shape == (100000, data_dim)
    assert (x[:, : latent_dim + 1].norm(dim=1) - 1).abs().max() < 1e-5
    # First and second moments of the samples against quadrature of the folded density.
    for f in (lambda v: v, lambda v: v**2):
        expected = (f(grid.x) * p[:, None]).sum(0)
        assert (f(x).mean(0) - expected).abs().max() < 0.012


def test_nsphere_chart_round_trip():
    sim = SphericalGaussian(latent_dim=3, data_dim=4)
    torch.manual_seed(0)
    a = torch.rand(100, 3, dtype=torch.float64) * torch.tensor([math.pi, math.pi, 2 * math.pi])
    x = nsphere_embed(a)
    assert torch.allclose(x.norm(dim=1), torch.ones(100, dtype=torch.float64))
    assert torch.allclose(sim.angles(x), a, atol=1e-6)
    sph = VonMisesSphereMixture()
    b = a[:, 1:]
    assert torch.allclose(sph.angles(sph.embed(b)), b, atol=1e-6)


def test_distance_to_manifold():
    sim = SphericalGaussian(latent_dim=2, data_dim=4, epsilon=0.0)
    x = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.6, 0.8, 0.0, 0.5]], dtype=torch.float64)
    assert torch.allclose(sim.distance_to_manifold(x), torch.tensor([1.0, 0.5], dtype=torch.float64))
    circ = VonMisesCircle()
    far = torch.tensor([[0.0, 4.0]])
    assert torch.allclose(circ.distance_to_manifold(far), torch.tensor([1.0], dtype=torch.float64))
