"""The projection onto the procedural renderer: rendered images come back to their own z at distance ≈ 0,
quantized ones to the quantization floor, and off-manifold images (blends, noise) lie clearly off."""

from __future__ import annotations

import math

import pytest
import torch

from mflow_cli.datasets.procedural import quantize, render
from mflow_cli.errors import ConfigError
from mflow_cli.metrics.renderer_distance import Renderer, distance_summary, project_onto_renderer, seed_parameters

torch.set_num_threads(1)
TOLERANCE = 0.05  # pixel levels, L2 over all 768 values (an RMS of 0.002 levels)


def _z(n: int, n_params: int, seed: int = 3, limit: float = 2.0) -> torch.Tensor:
    return torch.randn(n, n_params, generator=torch.Generator().manual_seed(seed)).clamp(-limit, limit)


def test_rendered_images_project_to_their_own_parameters():
    renderer = Renderer(2, 16)
    z = _z(60, 2)
    found = project_onto_renderer(renderer.pixels(z), renderer, starts=4, steps=150)
    assert found.distance.max() < TOLERANCE
    assert (found.z - z).abs().max() < 0.02  # the true z, not another one with a similar image
    again = (renderer.pixels(found.z) - renderer.pixels(z)).norm(dim=1)  # the distance is that of the z returned
    assert torch.allclose(again, found.distance, atol=1e-3)


def test_four_parameters_without_a_grid_mostly_reach_the_render():
    """n > 2: seeds are prior draws, not a grid; most images come back to distance ≈ 0 (local minima remain)."""
    renderer = Renderer(4, 16)
    found = project_onto_renderer(renderer.pixels(_z(40, 4)), renderer, starts=8, steps=300)
    assert (found.distance < TOLERANCE).float().mean() >= 0.9
    assert found.distance.median() < TOLERANCE


def test_quantized_renders_sit_at_the_quantization_floor():
    renderer = Renderer(2, 16)
    z = _z(60, 2, seed=4)
    levels = quantize(render(z, 16)).float() + 0.5  # bin centres, as the datasets hand them out
    found = project_onto_renderer(levels, renderer, starts=4, steps=150)
    to_true = (levels.reshape(60, -1) - renderer.pixels(z)).norm(dim=1)
    assert (found.distance <= to_true + 1e-3).all()  # never worse than the true z
    floor = math.sqrt(768 / 12)  # U(−½, ½) per value
    assert abs(float(found.distance.mean()) - floor) < 0.3


def test_off_manifold_images_get_a_clearly_positive_distance():
    renderer = Renderer(2, 16)
    left, right = renderer.pixels(torch.tensor([[-1.5, -1.5], [-1.5, 1.5]])), renderer.pixels(
        torch.tensor([[1.5, 1.5], [1.5, -1.5]]))
    blends = 0.5 * (left + right)  # two half-bright blobs: no single blob draws that
    noise = torch.rand(4, 768, generator=torch.Generator().manual_seed(0)) * 256
    found = project_onto_renderer(torch.cat([blends, noise]), renderer, starts=4, steps=150)
    assert (found.distance[:2] > 50).all() and (found.distance[2:] > 1000).all()
    assert (found.distance[:2] < 0.5 * (left - right).norm(dim=1)).all()  # and at most the way to either render


def test_non_finite_images_get_an_infinite_distance_and_bad_arguments_raise():
    renderer = Renderer(2, 8)
    x = renderer.pixels(_z(3, 2))
    x[1, 5] = float("nan")
    found = project_onto_renderer(x, renderer, starts=2, steps=150)
    assert math.isinf(found.distance[1]) and found.distance[[0, 2]].max() < TOLERANCE
    summary = distance_summary("d", torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert summary == pytest.approx({"d_mean": 3.0, "d_median": 3.0, "d_q10": 1.4, "d_q90": 4.6})
    with pytest.raises(ConfigError, match="starts must be >= 1"):
        project_onto_renderer(x, renderer, starts=0)
    with pytest.raises(ConfigError, match="n_params must be >= 1"):
        Renderer(0, 8)


def test_the_seed_grid_has_equal_prior_mass_per_cell():
    grid = seed_parameters(2, 8, 0, torch.Generator())
    assert grid.shape == (64, 2)
    cdf = 0.5 * (1 + torch.erf(grid[:, 0] / math.sqrt(2)))
    assert torch.allclose(torch.sort(torch.unique(cdf)).values, (torch.arange(8) + 0.5) / 8, atol=1e-6)
