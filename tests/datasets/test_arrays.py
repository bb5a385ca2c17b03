"""Your own data: readers, the seeded split, standardization (and densities in file units), checks, streaming."""

import math
import os

import h5py
import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from mflow_cli.datasets import arrays
from mflow_cli.datasets.arrays import ArrayDataset, Standardization, range_rows
from mflow_cli.errors import ConfigError


@pytest.fixture
def table():
    """600 rows, 3 features on different scales, each row distinct."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(600, 3)) * [1.0, 20.0, 0.01] + [3.0, -50.0, 0.5]


def write(path, x, **kwargs):
    """Write ``x`` as the file type of ``path``'s suffix; return the path."""
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez(path, data=x, labels=np.arange(len(x)))
    elif suffix == ".h5":
        with h5py.File(path, "w") as f:
            f.create_dataset("group/inner/data", data=x, chunks=(16, x.shape[1]), compression="gzip", **kwargs)
            f["labels"] = np.arange(len(x))  # a 1-D dataset beside it: not a candidate table
    elif suffix in (".csv", ".tsv"):
        sep = "," if suffix == ".csv" else "\t"
        header = sep.join(kwargs.get("names", [f"f{i}" for i in range(x.shape[1])]))
        np.savetxt(path, x, delimiter=sep, header=header if kwargs.get("header", True) else "", comments="")
    return path


def assert_close_in_model_units(a, b, dataset):
    """Equal up to float32 rounding of the model-unit values (errors scale with each feature's std)."""
    error = np.abs(a - b) / dataset.standardization.std.numpy()
    assert error.max() < 1e-5, error.max()


def original_rows(dataset):
    """Train and test rows mapped back to file units, with the file row numbers of each."""
    st = dataset.standardization
    ranges = dataset.split_ranges()
    return (
        (st.to_original(dataset.train_data().double()).numpy(), range_rows(ranges["train"])),
        (st.to_original(dataset.test_data().double()).numpy(), range_rows(ranges["test"])),
    )


@pytest.mark.parametrize("name", ["t.npy", "t.npz", "t.h5", "t.csv", "t.tsv"])
def test_every_format_round_trips_through_the_split(tmp_path, table, name):
    path = write(tmp_path / name, table)
    dataset = ArrayDataset(path)
    assert dataset.data_shape == (3,) and not dataset.streams
    (train, train_rows), (test, test_rows) = original_rows(dataset)
    assert len(test_rows) == 60 and len(train_rows) == 540
    assert np.intersect1d(train_rows, test_rows).size == 0
    assert np.array_equal(np.sort(np.concatenate([train_rows, test_rows])), np.arange(600))
    assert_close_in_model_units(train, table[train_rows], dataset)
    assert_close_in_model_units(test, table[test_rows], dataset)
    if name.endswith(("csv", "tsv")):
        assert dataset.feature_names == ["f0", "f1", "f2"]


def test_standardization_uses_the_training_rows(tmp_path, table):
    dataset = ArrayDataset(write(tmp_path / "t.npy", table))
    rows = range_rows(dataset.split_ranges()["train"])
    st = dataset.standardization
    np.testing.assert_allclose(st.mean.numpy(), table[rows].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(st.std.numpy(), table[rows].std(axis=0), rtol=1e-12)
    y = dataset.train_data().double()
    np.testing.assert_allclose(y.mean(0).numpy(), 0, atol=1e-6)
    np.testing.assert_allclose(y.std(0, correction=0).numpy(), 1, atol=1e-6)
    assert st.log_abs_det_to_model == pytest.approx(-np.log(table[rows].std(axis=0)).sum(), rel=1e-12)
    again = Standardization.from_state(st.state())
    assert torch.equal(again.mean, st.mean) and torch.equal(again.std, st.std)
    raw = ArrayDataset(write(tmp_path / "t.npy", table), standardize=False)
    np.testing.assert_allclose(raw.train_data().numpy(), table[rows].astype(np.float32))


def test_constant_feature_is_only_shifted(tmp_path, table):
    table[:, 1] = 7.0
    dataset = ArrayDataset(write(tmp_path / "t.npy", table))
    assert dataset.standardization.std[1] == 1 and dataset.standardization.mean[1] == 7
    assert torch.equal(dataset.train_data()[:, 1], torch.zeros(540))


def test_density_in_file_units_still_integrates_to_one():
    st = Standardization(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0]))
    model = torch.distributions.MultivariateNormal(torch.tensor([0.3, -0.2]), torch.tensor([[1.0, 0.6], [0.6, 2.0]]))
    # Grid in file units covering ±8 model-space standard deviations.
    u = torch.linspace(2.0 - 8 * 0.5 * 1.5, 2.0 + 8 * 0.5 * 1.5, 601, dtype=torch.float64)
    v = torch.linspace(-1.0 - 8 * 3.0 * 1.5, -1.0 + 8 * 3.0 * 1.5, 601, dtype=torch.float64)
    x = torch.stack(torch.meshgrid(u, v, indexing="ij"), -1).reshape(-1, 2)
    log_p = st.log_prob_to_original(model.log_prob(st.to_model(x).float()).double())
    mass = float(log_p.exp().sum() * (u[1] - u[0]) * (v[1] - v[0]))
    assert mass == pytest.approx(1.0, abs=1e-4)
    # Without the Jacobian the model density, read in file units, would hold the mass Π std = 0.5 · 3.
    log_p_model = model.log_prob(st.to_model(x).float()).double()
    assert float(log_p_model.exp().sum() * (u[1] - u[0]) * (v[1] - v[0])) == pytest.approx(1.5, abs=1e-4)


def test_known_gaussian_density_in_file_units_matches_scipy(tmp_path):
    mean, cov = np.array([10.0, -3.0, 0.2]), np.array([[4.0, 1.0, 0.0], [1.0, 9.0, -0.05], [0.0, -0.05, 0.01]])
    x = np.random.default_rng(3).multivariate_normal(mean, cov, size=2000)
    st = ArrayDataset(write(tmp_path / "g.npy", x)).standardization
    # The same Gaussian in model units: y = (x − m) / s has mean (μ − m) / s and covariance S⁻¹ C S⁻¹.
    s, m = st.std.numpy(), st.mean.numpy()
    model = multivariate_normal((mean - m) / s, cov / np.outer(s, s))
    points = x[:50]
    y = st.to_model(torch.from_numpy(points)).numpy()
    ours = st.log_prob_to_original(torch.from_numpy(model.logpdf(y))).numpy()
    np.testing.assert_allclose(ours, multivariate_normal(mean, cov).logpdf(points), rtol=1e-10)
    np.testing.assert_allclose(st.to_original(torch.from_numpy(y)).numpy(), points, rtol=1e-12)


def test_split_is_seeded_disjoint_and_capped(tmp_path, table):
    path = write(tmp_path / "t.npy", table)
    a, b, c = ArrayDataset(path, seed=4), ArrayDataset(path, seed=4), ArrayDataset(path, seed=5)
    assert a.split_info() == b.split_info()
    assert a.split_info()["test_ranges_sha256"] != c.split_info()["test_ranges_sha256"]
    capped = ArrayDataset(path, seed=4, n_train=100, n_test=25, test_fraction=0.2)
    train, test = (range_rows(r) for r in capped.split_ranges().values())
    assert len(train) == 100 and len(test) == 25 and np.intersect1d(train, test).size == 0
    assert set(test) <= set(range_rows(ArrayDataset(path, seed=4, test_fraction=0.2).split_ranges()["test"]))
    assert capped.train_data().shape == (100, 3)


def test_separate_test_file(tmp_path, table):
    train_path, test_path = write(tmp_path / "a.npy", table[:500]), write(tmp_path / "b.csv", table[500:])
    dataset = ArrayDataset(train_path, test_path=test_path, n_test=40)
    (train, train_rows), (test, test_rows) = original_rows(dataset)
    assert len(train_rows) == 500 and len(test_rows) == 40
    assert_close_in_model_units(test, table[500:][test_rows], dataset)
    with pytest.raises(ConfigError, match="exclude each other"):
        ArrayDataset(train_path, test_path=test_path, test_fraction=0.2)
    with pytest.raises(ConfigError, match="has 2 columns"):
        ArrayDataset(train_path, test_path=write(tmp_path / "c.npy", table[:, :2]))


def test_csv_columns_by_name_and_index_and_headerless(tmp_path, table):
    names = ["mass", "site", "energy"]
    path = write(tmp_path / "t.csv", table, names=names)
    by_name = ArrayDataset(path, columns=["energy", "mass"])
    assert by_name.feature_names == ["energy", "mass"]
    (rows, index), _ = original_rows(by_name)
    assert_close_in_model_units(rows, table[index][:, [2, 0]], by_name)
    by_index = ArrayDataset(path, columns=[2, 0])
    assert torch.equal(by_index.train_data(), by_name.train_data())
    bare = ArrayDataset(write(tmp_path / "bare.csv", table, header=False), columns=[-1])
    assert bare.data_shape == (1,) and bare.feature_names == ["2"]
    with pytest.raises(ConfigError, match="no header row"):
        ArrayDataset(tmp_path / "bare.csv", columns=["energy"])
    with pytest.raises(ConfigError, match="'charge' is not in the header"):
        ArrayDataset(path, columns=["charge"])


def test_non_numeric_csv_columns_are_named(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("x,species,y,site\n1.0,setosa,2.0,a\n3.0,virginica,4.0,b\n5.0,setosa,6.0,c\n")
    with pytest.raises(ConfigError, match=r"mixed.csv: non-numeric columns 'species', 'site' \(e.g. 'setosa' in data"):
        ArrayDataset(path)
    assert ArrayDataset(path, columns=["x", "y"], test_fraction=0.34).data_shape == (2,)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2\n3,4\n5\n")
    with pytest.raises(ConfigError, match="data row 2 has 1 fields, the first row has 2"):
        ArrayDataset(ragged)


def test_non_finite_rows_are_counted_with_the_first(tmp_path, table):
    table[[17, 230, 231], [0, 2, 1]] = [np.nan, np.inf, -np.inf]
    for name in ("t.npy", "t.h5", "t.csv"):
        with pytest.raises(ConfigError, match=f"{name}: 3 rows hold non-finite values .* the first is row 17"):
            ArrayDataset(write(tmp_path / name, table)).train_data()


def test_shape_key_and_file_errors(tmp_path, table):
    with pytest.raises(ConfigError, match="1-D"):
        ArrayDataset(write(tmp_path / "one.npy", table[:, 0]))
    with pytest.raises(ConfigError, match=r"shape \(600, 3, 1\)"):
        ArrayDataset(write(tmp_path / "three.npy", table[:, :, None]))
    h5 = write(tmp_path / "t.h5", table)
    assert ArrayDataset(h5).data_shape == ArrayDataset(h5, key="/group/inner/data").data_shape == (3,)
    with pytest.raises(ConfigError, match=r"no dataset 'x'; it holds group/inner/data \(600, 3\), labels \(600,\)"):
        ArrayDataset(h5, key="x")
    with pytest.raises(ConfigError, match="is 1-D"):
        ArrayDataset(h5, key="labels")
    with h5py.File(h5, "a") as f:
        f["second"] = table
    with pytest.raises(ConfigError, match="holds 2 2-D datasets .*; name one with key"):
        ArrayDataset(h5)
    npz = write(tmp_path / "t.npz", table)
    with pytest.raises(ConfigError, match=r"no array 'x'; it holds data \(600, 3\), labels \(600,\)"):
        ArrayDataset(npz, key="x")
    with pytest.raises(ConfigError, match="only HDF5 and .npz"):
        ArrayDataset(write(tmp_path / "t.npy", table), key="data")
    with pytest.raises(ConfigError, match="unknown file type .xlsx"):
        (tmp_path / "t.xlsx").write_bytes(b"PK")
        ArrayDataset(tmp_path / "t.xlsx")
    with pytest.raises(ConfigError, match="is a folder"):
        ArrayDataset(tmp_path)
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(ConfigError, match="pipe.csv: is a FIFO"):
        ArrayDataset(tmp_path / "pipe.csv")
    with pytest.raises(ConfigError, match="over stream_threshold_mb, and text files are not read in batches"):
        ArrayDataset(write(tmp_path / "t.csv", table), stream_threshold_mb=0.001)


def test_check_rows_against_the_batch_size(tmp_path, table):
    dataset = ArrayDataset(write(tmp_path / "t.npy", table), n_train=80)
    dataset.check_rows(80)
    with pytest.raises(ConfigError, match="training split has 80 rows, fewer than batch_size=100"):
        dataset.check_rows(100)


# --------------------------------------------------------------------------- streaming


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows so that small test files span many blocks and windows."""
    monkeypatch.setattr(arrays, "STREAM_BLOCK_BYTES", 16 * 3 * 8)
    monkeypatch.setattr(arrays, "STREAM_WINDOW_BLOCKS", 3)


def epoch(source, batch_size, seed, start=0):
    return list(source.batches(batch_size, torch.Generator().manual_seed(seed), start=start))


@pytest.mark.parametrize("name", ["t.h5", "t.npy"])
def test_streamed_epochs_see_every_training_row_once(tmp_path, table, small_blocks, name):
    table[:, 0] = np.arange(600)  # the first feature names the row
    dataset = ArrayDataset(write(tmp_path / name, table), stream_threshold_mb=0, n_train=500)
    assert dataset.streams and dataset.block_rows == 16
    with pytest.raises(ConfigError, match="read in batches"):
        dataset.train_data()
    source = dataset.batch_source()
    train_rows = range_rows(dataset.split_ranges()["train"])
    assert len(source) == len(train_rows) == 500
    st = dataset.standardization
    seen = []
    for seed in (0, 1):
        batches = epoch(source, 64, seed)
        assert [len(b) for b in batches] == [64] * 7 + [52]
        rows = st.to_original(torch.cat(batches).double())[:, 0].round().long().numpy()
        assert np.array_equal(np.sort(rows), train_rows)  # every training row exactly once
        seen.append(rows)
        full = torch.cat(batches).double()
        assert_close_in_model_units(st.to_original(full).numpy(), table[rows], dataset)
    assert not np.array_equal(seen[0], seen[1])  # epochs are shuffled differently
    # Deterministic given the generator, and a resumed epoch continues with the same batches.
    again = epoch(source, 64, 1)
    assert all(torch.equal(a, b) for a, b in zip(epoch(source, 64, 1), again, strict=True))
    for start in (1, 3, 7):
        tail = epoch(source, 64, 1, start=start)
        assert len(tail) == 8 - start and all(torch.equal(a, b) for a, b in zip(tail, again[start:], strict=True))
    # Rows are mixed across blocks, not served block by block.
    assert len(set(seen[0][:64] // 16)) > 4


def test_streamed_moments_match_numpy_and_test_rows_load(tmp_path, table, small_blocks):
    dataset = ArrayDataset(write(tmp_path / "t.h5", table), stream_threshold_mb=0)
    train, test = (range_rows(r) for r in dataset.split_ranges().values())
    assert np.intersect1d(train, test).size == 0 and len(train) + len(test) == 600
    assert len(test) == 16 * round(0.1 * math.ceil(600 / 16))  # whole blocks held out
    st = dataset.standardization
    np.testing.assert_allclose(st.mean.numpy(), table[train].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(st.std.numpy(), table[train].std(axis=0), rtol=1e-12)
    assert_close_in_model_units(st.to_original(dataset.test_data().double()).numpy(), table[test], dataset)


def test_streamed_non_finite_rows_fail_before_training(tmp_path, table, small_blocks):
    table[[400, 9], 1] = np.nan
    dataset = ArrayDataset(write(tmp_path / "t.npy", table), stream_threshold_mb=0)
    with pytest.raises(ConfigError, match="2 rows hold non-finite values .* the first is row 9"):
        dataset.batch_source()
