"""The mflow verbs end to end on a tiny recipe, and their behaviour on bad input."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny trained run shared by the tests below."""
    import yaml
    from helpers import tiny_recipe

    from mflow_cli.app.recipe import validate
    from mflow_cli.app.runs import train_run

    root = tmp_path_factory.mktemp("run")
    doc = tiny_recipe()
    (root / "tiny.yaml").write_text(yaml.safe_dump(doc))
    train_run(validate(doc, "tiny.yaml"), root / "run")
    return root / "run"


def test_train_writes_the_run_folder(tmp_path, tiny_recipe, mflow):
    out = tmp_path / "run"
    assert mflow("train", tiny_recipe, "--out", out, "--set", "train.epochs=1") == 0
    for name in ("model.pt", "checkpoint.pt", "metrics.jsonl", "recipe.yaml"):
        assert (out / name).is_file()
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["recipe"]["train"]["epochs"] == 1 and blob["data_shape"] == [2]
    # A second train into the same folder needs --resume or --force.
    assert mflow("train", tiny_recipe, "--out", out) == 2


def test_sample_and_encode_shapes(trained, tmp_path, mflow):
    samples = tmp_path / "s.h5"
    assert mflow("sample", trained, "-n", 250, "-o", samples, "--batch-size", 100) == 0
    with h5py.File(samples) as fh:
        assert fh["samples"].shape == (250, 2) and fh["samples"].dtype == np.float32
        assert fh.attrs["model"] == "dnf" and fh.attrs["recipe"] == "tiny"
        assert np.isfinite(fh["samples"][:]).all()
    latents = tmp_path / "z.h5"
    assert mflow("encode", trained, samples, "-o", latents, "--batch-size", 64) == 0
    with h5py.File(latents) as fh:
        assert fh["latents"].shape == (250, 1) and fh["log_prob"].shape == (250,)
        assert np.isfinite(fh["log_prob"][:]).all()
    # Refuses to overwrite without --force, and leaves the file alone.
    before = samples.read_bytes()
    assert mflow("sample", trained, "-n", 10, "-o", samples) == 2
    assert samples.read_bytes() == before
    assert mflow("sample", trained, "-n", 10, "-o", samples, "--force") == 0


def test_same_seed_same_samples(trained, tmp_path, mflow):
    for name in ("a.h5", "b.h5"):
        assert mflow("sample", trained, "-n", 50, "-o", tmp_path / name, "--seed", 7) == 0
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert np.array_equal(a["samples"][:], b["samples"][:])


def test_evaluate_and_plot(trained, tmp_path, mflow):
    import json

    out = tmp_path / "m.json"
    assert mflow("evaluate", trained, "-o", out) == 0
    metrics = json.loads(out.read_text())
    for key in ("test_log_likelihood_manifold", "reconstruction_mean_squared_distance", "kl_true_model"):
        assert isinstance(metrics[key], float)
    assert metrics["kl_true_model"] >= 0
    assert mflow("plot", trained) == 0
    names = {p.name for p in (trained / "plots").iterdir()}
    assert {"training_curves.png", "samples.png", "density_grid.png", "density_on_manifold.png"} <= names


def bad_h5(path, **datasets):
    with h5py.File(path, "w") as fh:
        for name, value in datasets.items():
            fh[name] = value
    return path


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: bad_h5(p, x=np.zeros((5, 3), np.float32)), "does not match the model's (N, 2)"),
        (lambda p: bad_h5(p, x=np.zeros((5, 2), np.int64)), "is not floating point"),
        (lambda p: bad_h5(p, x=np.array([[0, 1], [np.nan, 2]], np.float32)), "row 1 holds NaN or inf"),
        (lambda p: bad_h5(p, a=np.zeros((5, 2)), b=np.zeros((5, 2))), "pass --dataset NAME"),
        (lambda p: p.write_bytes(b"not hdf5 at all") and p, "not a readable HDF5 file"),
    ],
)
def test_bad_hdf5_inputs(trained, tmp_path, mflow, capsys, make, message):
    src = make(tmp_path / "in.h5")
    out = tmp_path / "out.h5"
    assert mflow("encode", trained, src, "-o", out) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_truncated_hdf5_is_refused(trained, tmp_path, mflow, capsys):
    src = bad_h5(tmp_path / "in.h5", x=np.random.rand(20000, 2).astype(np.float32))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    assert mflow("encode", trained, src, "-o", tmp_path / "o.h5") == 2
    assert "HDF5" in capsys.readouterr().err or "truncated" in capsys.readouterr().err


def test_missing_dataset_name(trained, tmp_path, mflow, capsys):
    src = bad_h5(tmp_path / "in.h5", x=np.zeros((4, 2), np.float32))
    assert mflow("encode", trained, src, "-o", tmp_path / "o.h5", "--dataset", "y") == 2
    assert "no dataset 'y'" in capsys.readouterr().err


def test_malicious_checkpoint_is_refused(tmp_path, mflow, capsys, trained):
    import shutil

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    run_dir = tmp_path / "evil"
    shutil.copytree(trained, run_dir)
    torch.save({"state_dict": Payload()}, run_dir / "model.pt")
    assert mflow("sample", run_dir, "-n", 5, "-o", tmp_path / "s.h5") == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_bad_recipe_via_console_script(tmp_path):
    """The installed script: one line on stderr, exit code 2, no traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text("data: {name: thin_spiral}\nmodel: {kind: dnf, latent_dim: two}\n")
    proc = subprocess.run([sys.executable, "-m", "mflow_cli", "train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: 'model.latent_dim' must be int or null, got 'two'"


def test_help_on_every_verb(mflow, capsys):
    for verb in ("train", "sample", "encode", "evaluate", "plot"):
        assert mflow(verb, "--help") == 0
        assert "Usage" in capsys.readouterr().out
