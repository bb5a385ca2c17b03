"""Recipe validation: every mistake is one clear error naming the key and the file."""

import pytest
import yaml

from mflow_cli.app.recipe import load_recipe, parse_overrides
from mflow_cli.errors import ConfigError


def write(tmp_path, doc, name="r.yaml"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


BASE = {"data": {"name": "thin_spiral"}, "model": {"kind": "dnf"}}


def test_defaults_are_filled_in_from_constructor_signatures(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE))
    assert recipe.name == "r"
    assert recipe.model["noise_std"] == 0.1 and recipe.model["outer_layers"] == 9
    mflow = load_recipe(write(tmp_path, {**BASE, "model": {"kind": "mflow"}}))
    assert mflow.model["schedule"] == "sequential" and mflow.model["reconstruction_weight"] == 1000.0
    assert recipe.train["batch_size"] == 100 and recipe.evaluate["manifold_grid_points"] == 10000


@pytest.mark.parametrize(
    "doc,message",
    [
        ({**BASE, "model": {"kind": "dnf", "outer_layerz": 3}}, "unknown key 'model.outer_layerz'"),
        ({**BASE, "model": {"kind": "dnf", "outer_layers": "nine"}}, "'model.outer_layers' must be int"),
        ({**BASE, "model": {"kind": "dnf", "schedule": "weekly"}}, "'model.schedule' must be one of"),
        ({**BASE, "model": {"kind": "nope"}}, "unknown model kind 'nope'"),
        ({**BASE, "data": {"n_train": 3}}, "'data.name' must name one of"),
        ({**BASE, "train": {"epochs": 1.5}}, "'train.epochs' must be int"),
        ({**BASE, "train": {"batch_size": 0}}, "'train.batch_size' must be >= 1"),
        ({**BASE, "train": {"epochs": {"warmup": 2}}}, "'train.epochs.warmup' is not a phase"),
        ({**BASE, "evaluate": {"grid": 3}}, "unknown key 'evaluate.grid'"),
        ({**BASE, "extra": 1}, "unknown top-level key 'extra'"),
        ({**BASE, "model": [1, 2]}, "section 'model' must be a mapping"),
        ({**BASE, "seed": "x"}, "'seed' must be int"),
        ("data: [unclosed\n", "line"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_recipes_name_key_and_file(tmp_path, doc, message):
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_overrides(tmp_path):
    path = write(tmp_path, BASE)
    recipe = load_recipe(path, ["train.lr=1e-3", "epochs=7", "model.outer_layers=4", "seed=5"])
    assert recipe.train["lr"] == 1e-3 and recipe.train["epochs"] == 7
    assert recipe.model["outer_layers"] == 4 and recipe.seed == 5
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["nonsense"])
    with pytest.raises(ConfigError, match="must be int"):
        load_recipe(path, ["model.outer_layers=many"])


def test_all_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted(Path(__file__).parents[2].glob("recipes/*.yaml"))
    assert recipes
    for path in recipes:
        try:
            load_recipe(path)
        except ConfigError as err:  # image recipes point at user data that is absent here
            assert "not found" in str(err), f"{path}: {err}"
