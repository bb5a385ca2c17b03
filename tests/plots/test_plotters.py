"""The one image-grid painter lays images out where it says, and every plotter draws its figures from the
evaluation options and its figure options (tiny untrained models)."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyImages

from mflow_cli.datasets.images import ImageManifold
from mflow_cli.datasets.sphere import VonMisesSphereMixture
from mflow_cli.datasets.spiral import ThinSpiral
from mflow_cli.datasets.toy3d import Toy3D
from mflow_cli.errors import ConfigError
from mflow_cli.metrics.flow_vae import VariationalEvaluation
from mflow_cli.metrics.images import ImageEvaluation
from mflow_cli.metrics.manifold import ManifoldEvaluation
from mflow_cli.metrics.vq_flow import AtlasEvaluation
from mflow_cli.models.flow_vae import FlowVAE
from mflow_cli.models.manifold_flow import ManifoldFlow
from mflow_cli.models.vq_flow import VQFlow
from mflow_cli.plots.common import image_grid, mosaic
from mflow_cli.plots.flow_vae import VariationalFigures, plot_flow_vae
from mflow_cli.plots.images import ImageFigures, plot_images
from mflow_cli.plots.manifold import ManifoldFigures, plot_manifold
from mflow_cli.plots.vq_flow import AtlasFigures, plot_vq_flow

torch.set_num_threads(1)


def binary_images() -> TinyImages:
    """30/20 random 1×4×4 images as binarized pixels (a stand-in for binarized MNIST)."""
    return TinyImages(n_train=30, n_test=20, preprocessing="none", dequantize=False, binarize="threshold", num_labels=4)
RECORDS = [{"phase": "joint", "epoch": 1, "loss": 2.0}, {"phase": "joint", "epoch": 2, "loss": 1.5}]


def test_mosaic_places_each_image_in_its_cell_with_white_gaps():
    images = torch.rand(5, 3, 2, 3)
    grid = mosaic(images, cols=2)
    assert grid.shape == (3 * 3 - 1, 2 * 4 - 1, 3)
    for i in range(5):
        r, c = divmod(i, 2)
        assert torch.equal(grid[3 * r : 3 * r + 2, 4 * c : 4 * c + 3], images[i].permute(1, 2, 0))
    assert (grid[2] == 1).all() and (grid[:, 3] == 1).all()  # gaps
    assert (grid[6:, 4:] == 1).all()  # the empty sixth cell


def test_image_grid_draws_greyscale_and_row_labels(tmp_path):
    path = image_grid(torch.rand(6, 1, 4, 4), tmp_path / "g.png", "title", cols=3, row_labels=["a", "b"])
    assert path.is_file() and path.stat().st_size > 0


def _manifold_flow(shape, latent_dim, **kw):
    torch.manual_seed(0)
    return ManifoldFlow(shape, latent_dim=latent_dim, outer_layers=1, inner_layers=1, hidden_features=8,
                        num_blocks=1, **kw).eval()


@pytest.mark.parametrize("dataset,latent_dim,expected", [
    (ThinSpiral(n_train=50, n_test=40), 1, {"samples.png", "density_grid.png", "density_on_manifold.png"}),
    (VonMisesSphereMixture(n_train=50, n_test=40), 2, {"samples.png", "density_chart.png", "samples_chart.png"}),
])
def test_plot_manifold_draws_its_figures(tmp_path, dataset, latent_dim, expected):
    model = _manifold_flow(dataset.data_shape, latent_dim)
    options = ManifoldEvaluation(n_samples=30, chart_grid_size=6, grid_limit=3.0)
    paths = plot_manifold(model, dataset, RECORDS, tmp_path, options, ManifoldFigures(grid_size=12))
    assert {p.name for p in paths} == expected | {"training_curves.png"} and all(p.is_file() for p in paths)


def test_plot_images_draws_samples_reconstructions_interpolations(tmp_path):
    data = ImageManifold(source="procedural", resolution=8, n_train=10, n_test=6)
    model = _manifold_flow((3, 8, 8), 2, architecture="image", levels=2)
    paths = plot_images(model, data, RECORDS, tmp_path, ImageEvaluation(),
                        ImageFigures(n_samples=4, n_interpolations=2, interpolation_steps=3))
    assert {p.name for p in paths} == {"training_curves.png", "samples.png", "reconstructions.png",
                                       "interpolations.png"}


@pytest.mark.parametrize("image_data", [False, True])
def test_plot_vq_flow_draws_samples(tmp_path, image_data):
    data = binary_images() if image_data else Toy3D("spheres", n_train=50, n_test=40)
    torch.manual_seed(0)
    model = VQFlow(data.data_shape, num_charts=2, chart_layers=1, hidden_features=8, vq_hidden_features=8).eval()
    paths = plot_vq_flow(model, data, RECORDS, tmp_path, AtlasEvaluation(), AtlasFigures(n_samples=20))
    assert {p.name for p in paths} == {"training_curves.png", "samples.png"}


def test_plot_flow_vae_draws_samples_reconstructions_and_latents(tmp_path):
    torch.manual_seed(0)
    model = FlowVAE((1, 4, 4), latent_dim=2, posterior_flow="planar", posterior_layers=2, hidden=[8]).eval()
    figure = VariationalFigures(n_samples=6, n_reconstructions=4, latent_points=20)
    paths = plot_flow_vae(model, binary_images(), RECORDS, tmp_path, VariationalEvaluation(), figure)
    assert {p.name for p in paths} == {"training_curves.png", "samples.png", "reconstructions.png",
                                       "latent_space.png"}


@pytest.mark.parametrize("cls,field,message", [
    (ManifoldFigures, "grid_size", "grid_size must be >= 2, got 0"),
    (ImageFigures, "n_samples", "n_samples must be >= 1, got 0"),
    (AtlasFigures, "n_samples", "n_samples must be >= 1, got 0"),
    (VariationalFigures, "n_samples", "n_samples must be >= 1, got 0"),
])
def test_figure_options_check_their_ranges(cls, field, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        cls(**{field: 0})
