"""Chart metrics (grid mass, KS, KL) on the circle and sphere: zero for the true density, not for a wrong one."""

import math

import pytest
import torch
from torch import nn

from mflow_cli.datasets.circle import VonMisesCircle
from mflow_cli.datasets.sphere import SphericalGaussian, VonMisesSphereMixture
from mflow_cli.metrics.manifold import ManifoldEvaluation, chart_metrics, evaluate_manifold


class Oracle(nn.Module):
    """A 'model' whose on-manifold density is the simulator's, optionally rotated by ``shift`` radians."""

    has_ambient_density, noise_std = False, 0.0

    def __init__(self, sim, shift=0.0, scale=1.0):
        super().__init__()
        self.sim, self.shift, self.scale = sim, shift, scale
        self.dummy = nn.Parameter(torch.zeros(1))

    def _rotate(self, x, angle):
        c, s = math.cos(angle), math.sin(angle)
        x = x.double().clone()
        x[:, :2] = x[:, :2] @ torch.tensor([[c, s], [-s, c]], dtype=torch.float64)  # about the last axis
        return x

    def log_prob_manifold(self, x):
        y = self._rotate(x, -self.shift)
        return self.sim.log_prob(y) + math.log(self.scale), x, x

    def sample(self, n):
        gen = torch.Generator().manual_seed(123)
        return self._rotate(self.sim.sample(n, gen), self.shift).float()


@pytest.mark.parametrize("sim,size", [(VonMisesCircle(), 2000), (VonMisesSphereMixture(), 60)])
def test_chart_metrics_vanish_for_the_true_density(sim, size):
    samples = Oracle(sim).sample(20000)
    m = chart_metrics(Oracle(sim), sim, size, samples, batch_size=5000)
    assert abs(m["model_mass_on_chart_grid"] - 1) < 1e-3
    assert m["ks_density"] < 1e-3 and m["kl_true_model_chart"] < 1e-6
    assert m["ks_samples"] < 0.015
    wrong = Oracle(sim, shift=0.3, scale=0.9)
    m = chart_metrics(wrong, sim, size, wrong.sample(20000), batch_size=5000)
    assert abs(m["model_mass_on_chart_grid"] - 0.9) < 1e-3
    assert m["ks_density"] > 0.1 and m["ks_samples"] > 0.1 and m["kl_true_model_chart"] > 0.1


def test_evaluate_manifold_on_sphere_oracle():
    sim = SphericalGaussian(n_test=500, epsilon=0.0)
    metrics = evaluate_manifold(
        Oracle(sim), sim, ManifoldEvaluation(manifold_grid_points=5000, n_samples=500, chart_grid_size=40)
    )
    assert abs(metrics["kl_true_model"]) < 1e-6 and abs(metrics["model_mass_on_true_manifold"] - 1) < 2e-3
    assert abs(metrics["model_mass_on_chart_grid"] - 1) < 2e-3 and metrics["ks_density"] < 2e-3
    assert metrics["mean_sample_distance_to_manifold"] < 1e-6
    assert metrics["reconstruction_mean_squared_distance"] == 0.0
