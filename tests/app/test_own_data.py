"""Your own data end to end: the array dataset through the CLI and the Python API, in the file's units."""

from __future__ import annotations

import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy import stats

import mflow_cli as mf

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "dnf_own_data.yaml"
TINY = ["--set", "train.epochs=1", "--set", "model.outer_layers=2", "--set", "model.hidden_features=16",
        "--set", "train.batch_size=50", "--set", "evaluate.n_samples=100"]


def sheet(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A curved 2-D sheet in R^5, rotated, scaled by 3 and shifted by 5: (x, rotation, offset)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, (n, 2))
    flat = np.stack([u[:, 0], u[:, 1], np.sin(2 * u[:, 0]) * np.cos(u[:, 1]), u[:, 0] * u[:, 1], 0 * u[:, 0]], 1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    return flat @ q.T * 3 + 5, q, np.full(5, 5.0)


@pytest.fixture
def sheet_file(tmp_path: Path) -> Path:
    path = tmp_path / "sheet.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("events", data=sheet()[0].astype("float32"), chunks=(64, 5), compression="gzip")
    return path


def test_train_sample_encode_in_the_files_units(tmp_path, sheet_file, mflow):
    run = tmp_path / "run"
    assert mflow("train", RECIPE, "--set", f"data.path={sheet_file}", *TINY, "--out", run) == 0
    assert {"model.pt", "recipe.yaml", "split.json", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    assert mflow("sample", run, "-n", "400", "-o", tmp_path / "s.h5") == 0
    with h5py.File(tmp_path / "s.h5") as fh:
        samples = fh["samples"][:]
    data = sheet()[0]
    # in the file's units: centred near 5 with the data's spread (a standardized model would give ~0 and ~1)
    assert np.abs(samples.mean(0) - data.mean(0)).max() < 1.0
    assert 0.3 < samples.std() / data.std() < 3
    assert mflow("encode", run, sheet_file, "-o", tmp_path / "z.h5") == 0
    with h5py.File(tmp_path / "z.h5") as fh:
        log_prob = fh["log_prob"][:]
    opened = mf.load_run(run)
    x = data[:50].astype("float32")
    # the API and the CLI agree, and both give densities in the file's units (model units + log|det ∂y/∂x|)
    np.testing.assert_allclose(opened.encode(x)["log_prob"], log_prob[:50], rtol=1e-5, atol=1e-4)
    model_units = opened.model.encode(opened.units.to_model(torch.as_tensor(x, dtype=torch.float64)).float())
    np.testing.assert_allclose(log_prob[:50], model_units["log_prob"].detach().numpy()
                               - np.log(opened.units.std.numpy()).sum(), rtol=1e-5, atol=1e-4)


def test_density_in_the_files_units_matches_a_known_gaussian(tmp_path):
    """An ambient flow (d = D) fitted to Gaussian data N(μ, diag σ²), whose scales differ by 8x and sit far from 0:
    its density in the file's units must be scipy's N(μ, diag σ²) (it learns N(0, I) in standardized units)."""
    rng = np.random.default_rng(1)
    mean, std = np.array([3.0, -20.0]), np.array([0.5, 4.0])
    x = mean + std * rng.normal(size=(4000, 2))
    path = tmp_path / "gauss.npy"
    np.save(path, x)
    run = mf.train({"name": "g", "seed": 0, "threads": 1, "data": {"name": "array", "path": str(path)},
                    "model": {"kind": "ambient_flow", "outer_layers": 2, "hidden_features": 8},
                    "train": {"epochs": 15, "batch_size": 200, "lr": 2e-3}}, out=tmp_path / "run")
    points = mean + std * rng.normal(size=(200, 2))
    truth = stats.multivariate_normal(mean, np.diag(std**2)).logpdf(points)
    assert np.abs(run.log_prob(points) - truth).mean() < 0.1
    # the same density integrates to 1 over the file's units (a grid over ±6σ)
    gx, gy = (np.linspace(m - 6 * s, m + 6 * s, 241) for m, s in zip(mean, std, strict=True))
    grid = np.stack(np.meshgrid(gx, gy, indexing="xy"), -1).reshape(-1, 2)
    mass = np.exp(run.log_prob(grid)).sum() * (gx[1] - gx[0]) * (gy[1] - gy[0])
    assert math.isclose(mass, 1.0, abs_tol=0.02)


def _bad_files(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(case, extra CLI args, the part of the one-line error that names what is wrong)."""
    good = np.random.default_rng(0).normal(size=(300, 3))
    cases = []
    nan = good.copy()
    nan[[7, 11]] = np.nan
    np.save(tmp / "nan.npy", nan)
    cases.append(("non-finite", [f"data.path={tmp / 'nan.npy'}"], r"2 rows .*first is row 7"))
    (tmp / "text.csv").write_text("a,b,c\n" + "\n".join(f"{i},x{i},{i}" for i in range(300)) + "\n")
    cases.append(("non-numeric CSV column", [f"data.path={tmp / 'text.csv'}"], r"'b'"))
    np.save(tmp / "one_d.npy", good[:, 0])
    cases.append(("1-D array", [f"data.path={tmp / 'one_d.npy'}"], r"1-D|2-D"))
    np.save(tmp / "three_d.npy", good.reshape(100, 3, 3))
    cases.append(("3-D array", [f"data.path={tmp / 'three_d.npy'}"], r"3-D|2-D"))
    with h5py.File(tmp / "keys.h5", "w") as fh:
        fh["a"], fh["b"] = good, good
    cases.append(("missing key", [f"data.path={tmp / 'keys.h5'}", "data.key=c"], r"'?c'?.*\ba\b.*\bb\b"))
    np.save(tmp / "few.npy", good[:40])
    cases.append(("fewer rows than a batch", [f"data.path={tmp / 'few.npy'}"], r"fewer than batch_size"))
    return cases


def test_bad_data_gives_one_line_naming_the_file_and_exit_2(tmp_path, mflow, capsys):
    for case, sets, expected in _bad_files(tmp_path):
        args = [a for s in sets for a in ("--set", s)]
        code = mflow("train", RECIPE, *args, *TINY, "--out", tmp_path / f"run_{case.replace(' ', '_')}")
        err = capsys.readouterr().err.strip()
        assert code == 2, (case, err)
        assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, (case, err)
        assert re.search(expected, err), (case, err)
        assert not (tmp_path / f"run_{case.replace(' ', '_')}" / "model.pt").exists()


def test_encoding_a_file_of_another_dimension_is_refused(tmp_path, sheet_file, mflow, capsys):
    run = tmp_path / "run"
    assert mflow("train", RECIPE, "--set", f"data.path={sheet_file}", *TINY, "--out", run) == 0
    with h5py.File(tmp_path / "wide.h5", "w") as fh:
        fh["x"] = np.zeros((10, 7), dtype="float32")
    capsys.readouterr()
    assert mflow("encode", run, tmp_path / "wide.h5", "-o", tmp_path / "z.h5") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(10, 7)" in err and "(N, 5)" in err
    assert not (tmp_path / "z.h5").exists()


def test_loading_a_run_leaves_torchs_thread_count_alone(tmp_path, sheet_file, mflow):
    run = tmp_path / "run"
    assert mflow("train", RECIPE, "--set", f"data.path={sheet_file}", *TINY, "--out", run, "--set", "threads=1") == 0
    torch.set_num_threads(2)
    try:
        mf.load_run(run)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
