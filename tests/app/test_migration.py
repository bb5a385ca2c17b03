"""Recipes and run folders of earlier versions keep working: old key spellings load with one notice and give the
same numbers."""

from __future__ import annotations

import copy
import logging

import h5py
import numpy as np
import pytest
from helpers import tiny_recipe

from mflow_cli import io
from mflow_cli.app import runs
from mflow_cli.app.recipe import validate


def _as_saved_by_earlier_versions(doc: dict) -> dict:
    """A resolved recipe as mflow 0.1 wrote it: old key names and kind spellings, figure keys in plot."""
    old = copy.deepcopy(doc)
    model = old["model"]
    if "linear" in model and model["kind"] in ("dnf", "mflow", "pae"):
        model["linear_transform"] = model.pop("linear")
    for key, value in model.items():
        if isinstance(value, str):
            model[key] = value.replace("rq_coupling", "rq-coupling").replace("affine_", "affine-")
    if model["kind"] == "vq_flow":
        model["flow"], model["layers"] = model.pop("chart_flow"), model.pop("chart_layers")
        old["train"]["epochs"] = {"vq": old["train"]["epochs"]["vq"], "flow": old["train"]["epochs"]["density"]}
    if model["kind"] == "dnf":
        old["plot"].update(n_samples=old["evaluate"]["n_samples"], seed=0)
    return old


@pytest.mark.parametrize("kind", ["dnf", "vq_flow"])
def test_a_run_folder_of_an_earlier_version_samples_and_evaluates_the_same(tmp_path, kind, caplog):
    doc = tiny_recipe()
    if kind == "vq_flow":
        doc = tiny_recipe(data={"name": "toy3d", "shape": "spheres", "n_train": 200, "n_test": 50},
                          model={"kind": "vq_flow", "num_charts": 2, "chart_layers": 1, "hidden_features": 8},
                          train={"epochs": {"vq": 1, "density": 1}, "batch_size": 100},
                          evaluate={"n_samples": 50, "mass_samples": 100}, plot={})
    recipe = validate(doc, "new.yaml")
    new = runs.train_run(recipe, tmp_path / "new")
    blob = io.load_torch(new / "model.pt")
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    io.save_torch({**blob, "recipe": _as_saved_by_earlier_versions(blob["recipe"])}, old_dir / "model.pt")
    with caplog.at_level(logging.WARNING, logger="mflow"):
        old_recipe, _ = runs.load_run(old_dir)
    notices = [r.getMessage() for r in caplog.records if "old spellings" in r.getMessage()]
    assert len(notices) == 1 and ("linear_transform" in notices[0] or "model.flow" in notices[0])
    assert old_recipe.to_dict() == recipe.to_dict()
    for folder in (new, old_dir):
        runs.sample_to_h5(folder, 64, folder / "s.h5", seed=5)
    with h5py.File(new / "s.h5") as a, h5py.File(old_dir / "s.h5") as b:
        np.testing.assert_array_equal(a["samples"][:], b["samples"][:])
    from mflow_cli.metrics.glossary import split_timings

    assert split_timings(runs.evaluate_run(old_dir))[0] == split_timings(runs.evaluate_run(new))[0]  # timings aside


def test_a_key_spelled_both_ways_is_refused():
    doc = tiny_recipe()
    doc["model"].update(linear="lu", linear_transform="lu")
    with pytest.raises(ValueError, match="same key"):
        validate(doc, "both.yaml")
