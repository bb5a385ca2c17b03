"""The 2-D/3-D recipes of the DNF and M-flow papers: fast smoke runs, and slow runs that meet the issue's bars."""

import math

import pytest
import torch

from mflow_cli.app import runs
from mflow_cli.app.recipe import load_recipe

TINY = [
    "data.n_train=300", "data.n_test=100", "train.epochs=1", "evaluate.manifold_grid_points=400",
    "evaluate.ambient_grid_size=8", "evaluate.n_samples=200", "evaluate.chart_grid_size=12",
    "plot.grid_size=20",
]


def run(recipe, tmp_path, overrides):
    torch.set_num_threads(1)
    rec = load_recipe(f"recipes/{recipe}.yaml", overrides)
    out = runs.train_run(rec, tmp_path / recipe)
    return runs.evaluate_run(out), out


@pytest.mark.parametrize(
    "recipe,extra",
    [
        ("dnf_circle", []), ("dnf_sphere", []), ("flow_spiral", []), ("dnf_spiral", []), ("mflow_spiral", []),
        ("dnf_spiral", ["model.kind=pie", "model.noise_std=0.0"]),
        ("mflow_spiral", ["model.kind=me_flow", "model.schedule=alternating"]),
    ],
)
def test_recipe_smoke(recipe, extra, tmp_path):
    metrics, out = run(recipe, tmp_path, TINY + ["model.outer_layers=2", "model.hidden_features=16"] + extra)
    for key in ("test_log_likelihood_manifold", "model_mass_on_true_manifold", "mean_sample_distance_to_manifold"):
        assert metrics[key] is not None and math.isfinite(metrics[key]), key
    assert "kl_true_model" in metrics and 0 <= metrics["true_mass_off_learned_manifold"] <= 1.001
    if recipe in ("dnf_circle", "dnf_sphere"):
        assert 0 <= metrics["ks_density"] <= 2 and 0 <= metrics["ks_samples"] <= 1
        assert metrics["model_mass_on_chart_grid"] > 0 and metrics["model_mass_on_chart_grid_deflated"] > 0
    assert ("kl_true_model_deflated" in metrics) == (recipe.startswith("dnf") and not extra)
    names = {p.name for p in runs.plot_run(out)}
    assert {"training_curves.png", "samples.png"} <= names
    if recipe == "dnf_sphere":
        assert {"density_chart.png", "samples_chart.png"} <= names
    else:
        assert "density_on_manifold.png" in names


@pytest.mark.slow
def test_dnf_spiral_meets_kl_bar(tmp_path):
    """Issue bar: DNF spiral KL(true‖model) < 0.1 nats with the paper's 100 epochs (about 10 minutes on one
    core). The paper's measure is the deflated density over the whole true spiral; the on-manifold density at
    projections must agree where the learned manifold passes, and that must be nearly everywhere."""
    metrics, _ = run("dnf_spiral", tmp_path, ["train.epochs=100", "evaluate.ambient_grid_size=0"])
    assert metrics["kl_true_model_deflated"] < 0.1
    assert metrics["kl_true_model"] < 0.1 and metrics["true_mass_off_learned_manifold"] < 0.1


@pytest.mark.slow
def test_dnf_circle_meets_ks_bar(tmp_path):
    """Issue bar: DNF circle KS < 0.1, for the angles of its samples and for the paper's density-CDF KS."""
    metrics, _ = run("dnf_circle", tmp_path, ["train.epochs=20", "evaluate.ambient_grid_size=0"])
    assert metrics["ks_samples"] < 0.1 and metrics["ks_density_deflated"] < 0.1


@pytest.mark.slow
def test_dnf_sphere_grid_mass_within_two_percent(tmp_path):
    """Issue bar: the DNF's density on the θ/φ grid (the paper's deflated estimate) has mass within 2% of 1,
    with the paper's 100 epochs (about 6 minutes on one core; 10 epochs leave it at 0.96)."""
    metrics, _ = run("dnf_sphere", tmp_path, ["train.epochs=100"])
    assert abs(metrics["model_mass_on_chart_grid_deflated"] - 1) < 0.02 and metrics["ks_density_deflated"] < 0.1
