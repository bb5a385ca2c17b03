"""What the figures draw: the axis scale of a curve, the panels of the training curves, the part of the true
manifold drawn, and the user's samples instead of fresh ones."""

from __future__ import annotations

import pytest
import torch

from mflow_cli.datasets.circle import VonMisesCircle
from mflow_cli.datasets.spiral import ThinSpiral
from mflow_cli.datasets.toy3d import Toy3D
from mflow_cli.errors import ConfigError
from mflow_cli.metrics.manifold import ManifoldEvaluation
from mflow_cli.metrics.vq_flow import AtlasEvaluation
from mflow_cli.models.manifold_flow import ManifoldFlow
from mflow_cli.models.vq_flow import VQFlow
from mflow_cli.plots.common import curve_panels, sample_subset, samples_to_draw, training_curves, value_scale
from mflow_cli.plots.manifold import (
    ManifoldFigures,
    outer_spline_range,
    plot_manifold,
    true_manifold_points,
    true_mass_range,
)
from mflow_cli.plots.vq_flow import AtlasFigures, plot_vq_flow

torch.set_num_threads(1)


@pytest.mark.parametrize("values,scale", [
    ([35.0, 8.0, 4.0, 3.5], "log"),  # positive, a decade: log
    ([1.2, 0.9, 0.7], "linear"),  # positive, less than a decade
    ([50.0, -1.0, -1.2, -1.1, -1.15], "symlog"),  # changes sign, the late epochs a sliver of the range
    ([-11.2, -11.1, -11.05], "linear"),  # negative ELBO-like curve within a narrow band
    ([None, 2.0], "linear"),
])
def test_value_scale(values, scale):
    assert value_scale(values) == scale


def test_curve_panels_put_held_out_values_with_theirs_and_split_keys_shared_by_phases():
    records = [{"phase": "manifold", "epoch": 1, "loss": 3.0, "mse": 1.0, "val_loss": 3.1, "val_mse": 1.1},
               {"phase": "density", "epoch": 1, "loss": 2.0, "nll_latent": 2.0, "val_only": 1.0, "lr": 1e-3}]
    assert curve_panels(records) == [("loss", "manifold"), ("loss", "density"), ("mse", None),
                                     ("nll_latent", None), ("val_only", None)]


def test_training_curves_draw_nothing_without_quantities(tmp_path):
    assert training_curves([], tmp_path / "a.png") is None
    assert training_curves([{"phase": "joint", "epoch": 1, "lr": 0.1}], tmp_path / "b.png") is None
    assert not (tmp_path / "b.png").exists()


def test_true_mass_range_holds_the_central_mass():
    cdf = torch.linspace(0.001, 1.0, 1000, dtype=torch.float64)  # uniform mass in 1000 cells
    first, last = true_mass_range(cdf)
    assert (first, last) == (0, 999)
    cdf = torch.cat([torch.zeros(100), torch.linspace(0.01, 1.0, 100), torch.ones(100)]).double()
    first, last = true_mass_range(cdf)
    assert (first, last) == (100, 199)  # the mass lies in cells 100..199


def test_the_open_spiral_is_drawn_to_its_mass_the_closed_circle_whole():
    spiral, circle = ThinSpiral(n_train=5, n_test=5), VonMisesCircle(n_train=5, n_test=5)
    x, log_p, w = spiral.manifold_grid(2000)
    drawn = true_manifold_points(spiral)
    assert 100 < len(drawn) < len(x) and torch.allclose(drawn, x[: len(drawn)].float())
    mass = (log_p.exp() * w)
    assert 0.999 <= float(mass[: len(drawn)].sum() / mass.sum()) < 0.9999
    assert len(true_manifold_points(circle)) == len(circle.manifold_grid(2000)[0])


def test_samples_to_draw_takes_the_users_samples_flat_and_checks_their_shape():
    given = torch.randn(7, 1, 2, 2)
    assert torch.equal(samples_to_draw(None, given, 100, (1, 2, 2)), given.reshape(7, 4))
    assert torch.equal(samples_to_draw(None, given.reshape(7, 4), 100, (1, 2, 2)), given.reshape(7, 4))
    with pytest.raises(ConfigError, match=r"^samples must have shape \(N, 2\), got \(5, 3\)$"):
        samples_to_draw(None, torch.randn(5, 3), 100, (2,))
    with pytest.raises(ConfigError, match=r"^samples must have shape \(N, 1, 2, 2\) or \(N, 4\), got \(5,\)$"):
        samples_to_draw(None, torch.randn(5), 100, (1, 2, 2))
    assert len(sample_subset(torch.randn(100, 2), 40)) == 20 and len(sample_subset(torch.randn(3, 2), 1)) == 1


class NoFreshSamples(ManifoldFlow):
    def sample(self, n):  # the plotter must draw the given samples, not ask for fresh ones
        raise AssertionError("fresh samples drawn although samples were given")


def test_plot_manifold_draws_given_samples(tmp_path):
    data = ThinSpiral(n_train=20, n_test=30)
    torch.manual_seed(0)
    model = NoFreshSamples((2,), latent_dim=1, outer_layers=1, inner_layers=1, hidden_features=8, num_blocks=1).eval()
    assert outer_spline_range(model) == 3.0
    options = ManifoldEvaluation(n_samples=30, grid_limit=3.0)
    paths = plot_manifold(model, data, [], tmp_path, options, ManifoldFigures(grid_size=8), samples=torch.randn(9, 2))
    assert {p.name for p in paths} == {"samples.png", "density_grid.png", "density_on_manifold.png"}
    with pytest.raises(ConfigError, match="samples must have shape"):
        plot_manifold(model, data, [], tmp_path, options, ManifoldFigures(grid_size=8), samples=torch.randn(9, 3))


def test_plot_vq_flow_draws_given_samples(tmp_path):
    data = Toy3D("spheres", n_train=30, n_test=20)
    torch.manual_seed(0)
    model = VQFlow((3,), num_charts=2, chart_layers=1, hidden_features=8, vq_hidden_features=8).eval()
    model.sample_charts = None  # not callable: the plotter must not draw fresh samples
    paths = plot_vq_flow(model, data, [], tmp_path, AtlasEvaluation(), AtlasFigures(n_samples=5),
                         samples=torch.randn(12, 3))
    assert [p.name for p in paths] == ["samples.png"]


def test_image_plotters_draw_given_samples(tmp_path):
    from helpers import TinyImages

    from mflow_cli.datasets.images import ImageManifold
    from mflow_cli.metrics.flow_vae import VariationalEvaluation
    from mflow_cli.metrics.images import ImageEvaluation
    from mflow_cli.models.flow_vae import FlowVAE
    from mflow_cli.plots.flow_vae import VariationalFigures, plot_flow_vae
    from mflow_cli.plots.images import ImageFigures, plot_images

    data = ImageManifold(source="procedural", resolution=8, n_train=10, n_test=6)
    torch.manual_seed(0)
    model = ManifoldFlow((3, 8, 8), latent_dim=2, outer_layers=1, inner_layers=1, hidden_features=8, num_blocks=1,
                         architecture="image", levels=2).eval()
    model.sample = None  # not callable: the given samples are drawn
    paths = plot_images(model, data, [], tmp_path, ImageEvaluation(), ImageFigures(n_interpolations=0),
                        samples=data.test_data()[:5])
    assert [p.name for p in paths] == ["samples.png", "reconstructions.png"]
    vae = FlowVAE((1, 4, 4), latent_dim=2, posterior_flow="planar", posterior_layers=1, hidden=[8]).eval()
    vae.sample = None
    paths = plot_flow_vae(vae, TinyImages(), [], tmp_path, VariationalEvaluation(),
                          VariationalFigures(n_reconstructions=0, latent_points=0), samples=torch.rand(4, 16))
    assert [p.name for p in paths] == ["samples.png"]
