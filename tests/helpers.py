"""Small stand-ins shared by the tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import copy
import gzip
import struct
from typing import Literal

import numpy as np
import torch

from mflow_cli.datasets.base import Dataset, Labelled, PixelData
from mflow_cli.datasets.pixels import PixelSpace
from mflow_cli.training import TrainingMonitor


class TinyImages(Dataset, PixelData, Labelled):
    """Random 1×4×4 8-bit images through a :class:`PixelSpace`: a stand-in for MNIST in tests.

    ``binarize="threshold"`` gives binarized pixels (Bernoulli models); ``preprocessing="logit"`` with
    ``dequantize`` the continuous logit space (Gaussian/flow models). Test images are dequantized with a fixed seed.
    """

    data_shape = (1, 4, 4)

    def __init__(
        self, n_train: int = 40, n_test: int = 20, preprocessing: Literal["glow", "logit", "none"] = "logit",
        dequantize: bool = True, binarize: Literal["none", "threshold"] = "none", num_labels: int = 3,
    ) -> None:
        gen = torch.Generator().manual_seed(0)
        self._levels = {split: torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8)
                        for split, n in (("train", n_train), ("test", n_test))}
        self._pixels = PixelSpace(self.data_shape, preprocessing=preprocessing, logit_alpha=0.05,
                                  dequantize=dequantize, binarize=binarize)
        self.num_labels = num_labels

    @property
    def pixels(self) -> PixelSpace:
        return self._pixels

    def levels(self, split: Literal["train", "test"]) -> torch.Tensor:
        return self._levels[split]

    def train_data(self) -> torch.Tensor:
        return self.pixels.to_model(self._levels["train"], dequantize=False)

    def test_data(self) -> torch.Tensor:
        return self.pixels.to_model(self._levels["test"], generator=torch.Generator().manual_seed(1))

    def labels(self, split: Literal["train", "test"] = "test") -> torch.Tensor:
        return torch.arange(len(self._levels[split])) % self.num_labels


TINY_RECIPE = {
    "name": "tiny",
    "seed": 3,
    "data": {"name": "thin_spiral", "n_train": 400, "n_test": 100},
    "model": {"kind": "dnf", "outer_layers": 2, "hidden_features": 16, "num_blocks": 1},
    "train": {"epochs": 2, "batch_size": 100},
    "evaluate": {"manifold_grid_points": 500, "ambient_grid_size": 10, "n_samples": 100},
    "plot": {"grid_size": 20},
}
"""The one tiny recipe of the tests: a DNF on the thin spiral that trains in a few seconds (copy before changing)."""


def tiny_recipe(**sections) -> dict:
    """A deep copy of :data:`TINY_RECIPE` with whole sections or top-level keys replaced."""
    doc = copy.deepcopy(TINY_RECIPE)
    doc.update(copy.deepcopy(sections))
    return doc


def perturbed_manifold_flow(kind: str, data_shape: tuple[int, ...] = (2,), **kw):
    """A small float64 manifold flow of a catalog kind, its weights moved away from their identity start."""
    from mflow_cli.app.catalog import MODELS

    torch.manual_seed(0)
    kw.setdefault("outer_layers", 3)
    if kind == "me_flow":
        kw.setdefault("encoder_hidden", 16)
    model = MODELS[kind].build(data_shape, hidden_features=16, num_blocks=1, **kw).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


class StopAt(TrainingMonitor):
    """Simulates Ctrl-C after ``n`` optimizer steps."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def step(self, phase, epoch, logs) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


def restore_default_signals() -> None:
    """For ``preexec_fn``: a child started from a background job inherits SIGINT ignored (as bash does for
    asynchronous commands), and one started under ``nohup`` SIGHUP ignored (a CI script run that way); give it
    the defaults so it can be interrupted as from a terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def write_idx(path, arr: np.ndarray, gz: bool = True) -> None:
    """``arr`` as an 8-bit IDX file (the MNIST format), gzipped unless ``gz`` is false."""
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with (gzip.open if gz else open)(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def write_tiny_mnist(folder, n_train: int, n_test: int, ink: float = 1.0, seed: int = 0):
    """A folder of the four MNIST IDX files with random 28×28 images (a fraction ``ink`` of pixels non-zero)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for split, n in (("train", n_train), ("t10k", n_test)):
        mask = rng.random((n, 28, 28)) < ink if ink < 1.0 else True
        images = mask * rng.integers(0, 256, (n, 28, 28))
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return folder
