"""Image manifolds: loaders, preprocessing, the procedural manifold, the multi-scale image flow, and a
tiny smoke training of every image recipe on the procedural manifold (8×8 or 16×16 images)."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mflow_cli.datasets.images import ImageManifold, load_image_files
from mflow_cli.datasets.procedural import render
from mflow_cli.errors import ConfigError
from mflow_cli.flows.image import head_mask, image_flow

warnings.filterwarnings("ignore", module="nflows")
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- loaders


def test_npy_folder_h5_and_single_file_load_the_same_levels(tmp_path):
    train, test = _images(12), _images(5, seed=1)
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "train.npy", train)
    np.save(tmp_path / "npy" / "test.npy", test.astype(np.float32) / 255.0)  # floats in [0, 1] too
    (tmp_path / "h5").mkdir()
    for name, arr in (("train", train), ("test", test)):
        with h5py.File(tmp_path / "h5" / f"{name}.h5", "w") as f:
            f["x"] = np.transpose(arr, (0, 3, 1, 2))  # channels first is accepted as well
    np.save(tmp_path / "all.npy", np.concatenate([train, test]))
    expected = (torch.from_numpy(train).permute(0, 3, 1, 2), torch.from_numpy(test).permute(0, 3, 1, 2))
    for path in (tmp_path / "npy", tmp_path / "h5", tmp_path / "all.npy"):
        got = load_image_files(str(path), n_test=5)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), path


def test_image_folder_round_trips_png(tmp_path):
    from PIL import Image

    arrays = _images(6, seed=2)
    for split, part in (("train", arrays[:4]), ("test", arrays[4:])):
        (tmp_path / split).mkdir()
        for i, a in enumerate(part):
            Image.fromarray(a).save(tmp_path / split / f"{i:03d}.png")
    train, test = load_image_files(str(tmp_path), n_test=2)
    assert torch.equal(train, torch.from_numpy(arrays[:4]).permute(0, 3, 1, 2))
    assert torch.equal(test, torch.from_numpy(arrays[4:]).permute(0, 3, 1, 2))


def test_missing_data_names_the_expected_files(tmp_path):
    with pytest.raises(ConfigError, match=r"not found at .*nowhere.*nowhere/train\.npy and .*nowhere/test\.npy"):
        ImageManifold(path=str(tmp_path / "nowhere")).train_data()
    np.save(tmp_path / "train.npy", _images(3))
    with pytest.raises(ConfigError, match="no test data"):
        ImageManifold(path=str(tmp_path)).train_data()


def test_resolution_average_pools_file_images(tmp_path):
    train = _images(4, size=8)
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "test.npy", train)
    data = ImageManifold(path=str(tmp_path), resolution=4, n_test=4)
    pooled = train.reshape(4, 4, 2, 4, 2, 3).astype(np.float64).mean((2, 4))
    assert torch.equal(data.levels("train"), torch.from_numpy(np.round(pooled).astype(np.uint8)).permute(0, 3, 1, 2))


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("kind", ["glow", "logit", "none"])
def test_preprocessing_inverts_and_dequantization_stays_in_the_bin(kind):
    data = ImageManifold(source="procedural", resolution=8, n_train=20, n_test=5, preprocessing=kind)
    y = data.train_data()
    levels = data.levels("train").float()
    assert torch.allclose(data.pixels.to_pixels(y), levels + 0.5, atol=1e-3)
    torch.manual_seed(0)
    noisy = data.pixels.to_pixels(data.batch_transform(y))
    assert torch.equal(torch.floor(noisy + 1e-4).clamp(max=255), levels)  # same 8-bit bin
    assert (noisy - levels - 0.5).abs().mean() > 0.2  # ~ U(0, 1) spread, mean |u − ½| = ¼


def test_log_jacobian_to_pixels_matches_autograd():
    pixels = ImageManifold(source="procedural", resolution=4, preprocessing="logit").pixels
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 256
    y = pixels.preprocess(x)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: pixels.preprocess(v).reshape(-1), x[i]).reshape(48, 48)
        got = pixels.log_jacobian_to_pixels(y[i : i + 1])[0].item()
        assert got == pytest.approx(torch.linalg.slogdet(jac)[1].item())


def test_procedural_manifold_has_the_stated_dimension():
    """The rendering's Jacobian has rank n_params: the images span an n_params-dimensional manifold."""
    torch.manual_seed(1)
    for n_params in (2, 6):
        z = torch.randn(n_params) * 0.5
        jac = torch.autograd.functional.jacobian(lambda p: render(p[None], 16).reshape(-1), z)
        s = torch.linalg.svdvals(jac)
        assert s.shape == (n_params,) and s.min() > 1e-3 * s.max()
    a = ImageManifold(source="procedural", n_params=2, resolution=8, n_train=10, n_test=3, seed=4).train_data()
    b = ImageManifold(source="procedural", n_params=2, resolution=8, n_train=10, n_test=3, seed=4).train_data()
    c = ImageManifold(source="procedural", n_params=2, resolution=8, n_train=10, n_test=3, seed=5).train_data()
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- the image flow


def test_image_flow_inverts_and_its_logdet_matches_brute_force():
    torch.manual_seed(0)
    flow = image_flow((3, 4, 4), 2, levels=2, hidden_channels=8, num_blocks=1, latent_dim=2).double()
    x = torch.randn(4, 48, dtype=torch.float64) * 0.3
    flow(x)  # ActNorm's data-dependent initialisation
    flow.eval()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    y, logdet = flow(x)
    back, inv_logdet = flow.inverse(y)
    assert torch.allclose(back, x, atol=1e-10) and torch.allclose(logdet, -inv_logdet, atol=1e-10)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[0])
    assert logdet[0].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-8)


def test_head_mask_takes_channels_per_level_and_rejects_a_too_large_latent():
    # 8×8×3, 2 levels: level 0 hands out (6, 4, 4), level 1 (24, 2, 2); factor 1 keeps 1·16 + 2·4 dims
    mask = head_mask((3, 8, 8), 2, 1)
    assert mask.shape == (192,) and int(mask.sum()) == 24 and mask[:16].all() and not mask[16:96].any()
    with pytest.raises(ConfigError, match="channel_factor"):
        image_flow((3, 8, 8), 1, levels=2, hidden_channels=4, num_blocks=1, latent_dim=30)


# --------------------------------------------------------------------------- recipes, tiny


TINY_FLOW = ["model.levels=2", "model.outer_layers=1", "model.hidden_features=8", "model.num_blocks=1",
             "model.inner_layers=1"]
TINY = {
    "dnf_gan2d": TINY_FLOW,
    "mflow_gan2d": TINY_FLOW,
    "dnf_gan64d": [*TINY_FLOW, "model.channel_factor=4"],
    "mflow_gan64d": [*TINY_FLOW, "model.channel_factor=4"],
    "dnf_celeba": [*TINY_FLOW, "model.channel_factor=8", "data.resolution=16"],
    "mflow_celeba": [*TINY_FLOW, "model.channel_factor=8", "data.resolution=16"],
    "pae_gan2d": ["model.channels=4", "model.inner_layers=1", "model.inner_hidden_features=8"],
    "infomax_gan2d": ["model.channels=4", "model.discriminator_hidden=[16]"],
}
SMALL_16PX = ["evaluate.fid=false", "evaluate.projection_steps=10", "evaluate.n_test=6"]
TINY.update({
    "dnf_gan2d_16px": [*TINY_FLOW, *SMALL_16PX],
    "mflow_gan2d_16px": [*TINY_FLOW, *SMALL_16PX],
    "dnf_gan8d_16px": [*TINY_FLOW, *SMALL_16PX],
    "mflow_gan8d_16px": [*TINY_FLOW, *SMALL_16PX],
    "ambient_flow_gan2d_16px": [*TINY_FLOW[:4], *SMALL_16PX],  # channel_factor 12 covers all 8×8×3 values too
    "pae_gan2d_16px": [*TINY["pae_gan2d"], *SMALL_16PX],
    "infomax_gan2d_16px": [*TINY["infomax_gan2d"], *SMALL_16PX],
})


def tiny_overrides(name: str) -> list[str]:
    from mflow_cli.app.recipe import read_yaml

    epochs = read_yaml(RECIPES / f"{name}.yaml")["train"]["epochs"]
    steps = "{manifold: 1, density: 1}" if isinstance(epochs, dict) else "1"
    return ["threads=1", "data.source=procedural", "data.resolution=8", "data.n_train=40", "data.n_test=6",
            "train.batch_size=20", f"train.epochs={steps}", "evaluate.n_samples=4", *TINY[name]]


@pytest.mark.parametrize("name", sorted(TINY))
def test_image_recipe_trains_on_the_procedural_manifold(name, tmp_path):
    from mflow_cli.app.recipe import load_recipe
    from mflow_cli.app.runs import evaluate_run, load_run, train_run

    recipe = load_recipe(RECIPES / f"{name}.yaml", tiny_overrides(name))
    train_run(recipe, tmp_path / "run")
    _, model = load_run(tmp_path / "run", device="cpu")
    res = recipe.data["resolution"]
    assert model.sample(3).shape == (3, 3, res, res)
    assert torch.isfinite(model.sample(3)).all()
    if model.latent_dim <= 64:
        metrics = evaluate_run(tmp_path / "run")
        assert np.isfinite(metrics["test_log_likelihood_manifold"])
        assert metrics["reconstruction_mean_squared_distance"] > 0
        assert ("test_bits_per_dim_ambient" in metrics) == (recipe.model["kind"] == "dnf")


def test_cli_trains_and_plots_an_image_recipe(tmp_path, mflow):
    out = tmp_path / "run"
    sets = [a for o in [*tiny_overrides("dnf_gan2d"), "plot.n_samples=4"] for a in ("--set", o)]
    assert mflow("train", RECIPES / "dnf_gan2d.yaml", "--out", out, *sets) == 0
    assert mflow("plot", out) == 0
    names = {p.name for p in (out / "plots").iterdir()}
    assert {"samples.png", "reconstructions.png", "interpolations.png", "training_curves.png"} <= names
    # Without the data files and without the override, the error names the expected files.
    assert mflow("train", RECIPES / "dnf_gan2d.yaml", "--out", tmp_path / "other", "--set", "threads=1") == 2
