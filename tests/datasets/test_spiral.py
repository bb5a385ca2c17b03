"""The thin-spiral simulator: its true density is a proper density along the curve."""

import math

import torch

from mflow_cli.datasets.spiral import ThinSpiral


def test_density_integrates_to_one_along_the_curve():
    sim = ThinSpiral()
    x, log_p, weights = sim.manifold_grid(200_000, max_latent=6.0)
    # Cell weights are arc lengths: check them against the polyline through the grid points.
    polyline = (x[1:] - x[:-1]).norm(dim=1).sum()
    assert abs(float(polyline) - float(weights[1:-1].sum() + 0.5 * (weights[0] + weights[-1]))) < 1e-3
    mass = float((log_p.exp() * weights).sum())
    tail = math.exp(-6.0 / 0.3)
    assert abs(mass - (1 - tail)) < 1e-4


def test_samples_follow_the_curve_parameter_density():
    sim = ThinSpiral(n_train=50_000)
    x = sim.train_data().double()
    z = 3 * x.norm(dim=1)  # |x| = z / 3 on the spiral
    assert torch.allclose(sim.embed(z), x, atol=1e-5)
    edges = torch.linspace(0.5, 12.0, 24, dtype=torch.float64)
    counts = torch.histogram(z, edges).hist / len(z)
    mid = torch.linspace(0.5, 12.0, 24 * 50 + 1, dtype=torch.float64)
    density = sim.log_prob_z(mid).exp()
    cells = [slice(i * 50, i * 50 + 51) for i in range(23)]
    expected = torch.stack([torch.trapezoid(density[c], mid[c]) for c in cells])
    assert (counts - expected).abs().max() < 0.01
