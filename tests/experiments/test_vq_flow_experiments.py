"""The VQ-Flow experiment commands run end to end on tiny data: the MNIST table and the toy 3-D figure."""

from __future__ import annotations

from pathlib import Path

import yaml
from helpers import write_tiny_mnist

from mflow_cli.app.recipe import validate
from mflow_cli.app.runs import evaluate_run, train_run
from mflow_cli.experiments import vq_flow_mnist, vq_flow_toy3d


def test_the_mnist_table_trains_evaluates_reuses_and_summarises_over_seeds(tmp_path):
    mnist = write_tiny_mnist(tmp_path / "mnist", 64, 16, ink=0.2)
    overrides = (f"data.path={mnist}", "train.epochs.density=1", "train.batch_size=32", "evaluate.fid_samples=16",
                 "evaluate.mass_samples=16", "model.hidden_features=8", "model.chart_layers=2")
    runs = tmp_path / "runs"
    results = {}
    for seed in (1, 2):
        for recipe in ("realnvp_mnist", "vqflow_mnist_realnvp"):
            extra = ("train.epochs.vq=1", "model.vq_hidden_features=8") if recipe.startswith("vq") else ()
            results[(recipe, seed)] = vq_flow_mnist.run_one(recipe, seed, runs, False, overrides + extra)
    vq = results[("vqflow_mnist_realnvp", 1)]
    assert vq["test_bits_per_dim"] <= vq["worst_test_bits_per_dim"]
    assert vq["median_test_bits_per_dim"] <= vq["worst_test_bits_per_dim"]
    assert vq["flow_parameters"] > results[("realnvp_mnist", 1)]["flow_parameters"]  # context + conformal maps
    assert yaml.safe_load((runs / "vqflow_mnist_realnvp_s2" / "recipe.yaml").read_text())["seed"] == 2
    stamp = (runs / "realnvp_mnist_s1" / "model.pt").stat().st_mtime_ns
    again = vq_flow_mnist.run_one("realnvp_mnist", 1, runs, True, overrides)  # reused, not retrained
    assert (runs / "realnvp_mnist_s1" / "model.pt").stat().st_mtime_ns == stamp
    assert again["test_bits_per_dim"] == results[("realnvp_mnist", 1)]["test_bits_per_dim"]
    table = vq_flow_mnist.markdown(results, [1, 2], 1)
    mean = (results[("realnvp_mnist", 1)]["test_bits_per_dim"] + results[("realnvp_mnist", 2)]["test_bits_per_dim"]) / 2
    assert f"| `realnvp_mnist` | {results[('realnvp_mnist', 1)]['flow_parameters']:,} | {mean:.3f} ± " in table
    assert "over all 16 test images" in table and "`vqflow_mnist_realnvp` seed 2" in table


def test_the_summary_is_mean_and_sample_standard_deviation():
    assert vq_flow_mnist.summary([1.0, 2.0, 3.0], "{:.2f}") == "2.00 ± 1.00"
    assert vq_flow_mnist.summary([4.0], "{:.1f}") == "4.0"
    assert vq_flow_mnist.summary([1.0, None], "{:.1f}") == "—"


def test_the_toy_figure_draws_data_and_both_models_per_shape(tmp_path):
    runs = tmp_path / "runs"
    for name in ("realnvp_toy3d_rings", "vqflow_toy3d_rings"):
        doc = yaml.safe_load((Path("recipes") / f"{name}.yaml").read_text())
        doc["data"].update(n_train=300, n_test=100)
        doc["model"].update(chart_layers=2, hidden_features=8)
        doc["train"]["epochs"] = {phase: 1 for phase in doc["train"]["epochs"]}
        doc["evaluate"] = {"n_samples": 50, "mass_samples": 50}
        train_run(validate(doc, f"{name}.yaml"), runs / name)
        evaluate_run(runs / name)
    out = tmp_path / "toy.png"
    vq_flow_toy3d.main(["rings", "--runs", str(runs), "--out", str(out), "-n", "200"])
    assert out.stat().st_size > 10_000
