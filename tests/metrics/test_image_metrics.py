"""The image evaluator's true-manifold metrics: latent recovery R², the test images' true parameters, and that
every key it returns is described in METRICS."""

from __future__ import annotations

import math

import pytest
import torch

from mflow_cli.datasets.images import ImageManifold
from mflow_cli.datasets.procedural import quantize, render, split_parameters
from mflow_cli.metrics.common import Metric
from mflow_cli.metrics.images import METRICS, ImageEvaluation, evaluate_images, latent_recovery_r2, true_parameters
from mflow_cli.models.manifold_flow import ManifoldFlow
from mflow_cli.models.pae import ProbabilisticAutoEncoder

torch.set_num_threads(1)


def _z(n: int = 400, dims: int = 2) -> torch.Tensor:
    return torch.randn(n, dims, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_latent_recovery_of_a_linear_map_is_one_and_of_noise_is_zero():
    z = _z()
    gen = torch.Generator().manual_seed(1)
    u = z @ torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.0, 4.0]], dtype=torch.float64) + 7.0
    linear, knn = latent_recovery_r2(u, z)
    assert linear == pytest.approx(1.0, abs=1e-10) and knn > 0.95
    linear, knn = latent_recovery_r2(torch.randn(400, 2, generator=gen, dtype=torch.float64), z)
    assert abs(linear) < 0.05 and knn < 0.05  # unrelated coordinates explain nothing (k-NN: about −1/k)


def test_latent_recovery_knn_sees_a_nonlinear_map_the_linear_fit_misses():
    z = _z()
    linear, knn = latent_recovery_r2(z**3, z)  # corr(z, z³) = 3/√15: a linear fit explains 60 %
    assert knn > 0.85 and 0.4 < linear < 0.7


def test_latent_recovery_r2_matches_a_hand_computed_fold():
    z = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    u = torch.tensor([[0.0], [1.0], [2.0], [4.0]], dtype=torch.float64)
    # fold 1: fit rows 0, 1 (z = u) -> predict 2, 4 for z = 2, 3; fold 2: fit rows 2, 3 (z = 1 + u/2) -> 1, 1.5
    sse = (2 - 2) ** 2 + (3 - 4) ** 2 + (0 - 1) ** 2 + (1 - 1.5) ** 2
    sst = 0.25 + 0.25 + 0.25 + 0.25
    linear, knn = latent_recovery_r2(u, z, neighbours=1)
    assert linear == pytest.approx(1 - sse / sst)
    # k-NN (k = 1, u standardised on the fitted half): 2 -> row 1, 4 -> row 1; 0 -> row 2, 1 -> row 2
    assert knn == pytest.approx(1 - ((2 - 1) ** 2 + (3 - 1) ** 2 + (0 - 2) ** 2 + (1 - 2) ** 2) / sst)


def test_true_parameters_render_the_test_images():
    data = ImageManifold(source="procedural", n_params=3, resolution=8, n_train=10, n_test=7, seed=5)
    z = true_parameters(data, 7)
    assert torch.equal(quantize(render(z, 8)), data.levels("test"))
    assert torch.equal(quantize(render(split_parameters("train", 10, 3, 5), 8)), data.levels("train"))


@pytest.fixture(scope="module")
def tiny_runs():
    data = ImageManifold(source="procedural", n_params=2, resolution=8, n_train=40, n_test=12)
    torch.manual_seed(0)
    dnf = ManifoldFlow((3, 8, 8), latent_dim=2, architecture="image", levels=2, outer_layers=1, inner_layers=1,
                       hidden_features=8, num_blocks=1, noise_std=0.01).eval()
    flow = ManifoldFlow((3, 8, 8), latent_dim=None, architecture="image", levels=2, outer_layers=1, inner_layers=0,
                        hidden_features=8, num_blocks=1, channel_factor=12, noise_std=0.0,
                        reconstruction_weight=0.0).eval()
    pae = ProbabilisticAutoEncoder((3, 8, 8), latent_dim=2, architecture="conv", channels=4).eval()
    return data, {"dnf": dnf, "ambient_flow": flow, "pae": pae}


def test_every_key_is_described_and_the_floor_is_the_quantization_noise(tiny_runs, tmp_path):
    data, models = tiny_runs
    options = ImageEvaluation(n_test=12, n_samples=10, n_reference=20, projection_steps=100, fid=True,
                              fid_cache_dir=str(tmp_path))
    assert all(isinstance(m, Metric) for m in METRICS.values())
    for name, model in models.items():
        metrics = evaluate_images(model, data, options)
        assert set(metrics) <= set(METRICS), (name, set(metrics) - set(METRICS))
        assert ("latent_r2_linear" in metrics) == (name != "ambient_flow")
        assert ("test_bits_per_dim_ambient" in metrics) == (name != "pae")
        floor = metrics["test_distance_to_manifold_mean"]
        assert abs(floor - math.sqrt(192 / 12)) < 0.3  # 8×8×3 values, U(−½, ½) each
        assert metrics["sample_distance_to_manifold_mean"] > floor  # untrained models sample off the manifold
        assert metrics["frechet_feature_distance"] is not None and metrics["frechet_feature_distance"] > 0
        with torch.no_grad():
            proj = model.log_prob_manifold(data.test_data()[:12].reshape(12, -1))[1]
        l2 = (data.pixels.to_pixels(data.test_data()[:12].reshape(12, -1)) - data.pixels.to_pixels(proj)).norm(dim=1)
        assert metrics["reconstruction_l2_pixels"] == pytest.approx(float(l2.mean()), rel=1e-4)
    assert len(list(tmp_path.glob("fid_classifier_*.pt"))) == 1  # one feature network scores every model
    ambient = evaluate_images(models["ambient_flow"], data, options)
    assert ambient["reconstruction_l2_pixels"] < 1e-2  # d = D: every image is its own projection
    assert ambient["reconstruction_distance_to_manifold_mean"] == pytest.approx(floor, abs=1e-3)


def test_projection_starts_zero_skips_the_true_manifold_metrics(tiny_runs):
    data, models = tiny_runs
    metrics = evaluate_images(models["pae"], data, ImageEvaluation(n_test=12, n_samples=4, n_reference=20,
                                                                   projection_starts=0))
    assert not any("distance_to_manifold" in k or k.startswith("latent_r2") for k in metrics)
