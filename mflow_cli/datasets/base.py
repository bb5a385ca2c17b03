"""What every dataset offers, and the typed capabilities some datasets add.

Every dataset gives train/test tensors ``(N, *data_shape)``. Evaluators and plotters ask for more through
the capability classes below, which a dataset inherits explicitly (``class ThinSpiral(Simulator,
DistanceToManifold, ...)``), so ``isinstance(dataset, PixelData)`` is a typed question, never an
attribute probe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..training import BatchSource
    from .arrays import Standardization


class ExistingPath(str):
    """Type hint for an argument that names a file or folder that must exist (checked at validation)."""


class Dataset:
    """A source of training and test data, shape ``(N, *data_shape)``, float32."""

    data_shape: tuple[int, ...]

    def train_data(self) -> torch.Tensor:
        raise NotImplementedError

    def test_data(self) -> torch.Tensor:
        raise NotImplementedError

    def batch_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Per-batch training augmentation (dequantization, flips, ...); identity by default."""
        return x


class SampledDataset(Dataset):
    """Train and test sets drawn once from :meth:`sample` with seeds derived from ``seed`` (cached)."""

    def __init__(self, n_train: int, n_test: int, seed: int) -> None:
        if n_train < 1 or n_test < 1:
            raise ConfigError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
        self.n_train, self.n_test, self.seed = n_train, n_test, seed
        self._cache: dict[str, torch.Tensor] = {}

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _split(self, name: str, n: int, offset: int) -> torch.Tensor:
        if name not in self._cache:
            gen = torch.Generator().manual_seed(self.seed * 2 + offset)
            self._cache[name] = self.sample(n, gen).float()
        return self._cache[name]

    def train_data(self) -> torch.Tensor:
        return self._split("train", self.n_train, 0)

    def test_data(self) -> torch.Tensor:
        return self._split("test", self.n_test, 1)


# --------------------------------------------------------------------------- capabilities


class KnownDensity(ABC):
    """A known distribution on a known manifold of dimension ``manifold_dim``."""

    manifold_dim: int

    @abstractmethod
    def manifold_grid(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Points ``x`` (n, D) on the manifold, true ``log p(x)`` w.r.t. volume, and volume weights.

        ``sum(weights * exp(log_p))`` approximates the total mass (1 up to truncation).
        """


class DistanceToManifold(ABC):
    """Datasets whose support (the true manifold) is known well enough to measure distances to it."""

    @abstractmethod
    def distance_to_manifold(self, x: torch.Tensor) -> torch.Tensor:
        """Euclidean distance (N,) of each row of ``x`` (N, D) to the true manifold."""


class ChartCoordinates(ABC):
    """Manifolds with an angular chart (circle: θ; spheres: θ/φ) and a quadrature grid in it."""

    manifold_dim: int

    @abstractmethod
    def chart_grid(self, n: int):
        """A :class:`~mflow_cli.datasets.charts.ChartGrid` with ``n`` cells per angle."""

    @abstractmethod
    def angles(self, x: torch.Tensor) -> torch.Tensor:
        """Chart coordinates (N, manifold_dim) of points ``x`` (N, D)."""


class PixelData(ABC):
    """Image datasets: the model sees preprocessed values, :attr:`pixels` maps them back."""

    @property
    @abstractmethod
    def pixels(self):
        """The :class:`~mflow_cli.datasets.pixels.PixelSpace` of this dataset's preprocessing."""

    @abstractmethod
    def levels(self, split: Literal["train", "test"]) -> torch.Tensor:
        """The split's 8-bit levels (N, C, H, W), uint8."""


class Labelled(ABC):
    """Datasets with a class label per example (MNIST, ...)."""

    @abstractmethod
    def labels(self, split: Literal["train", "test"] = "test") -> torch.Tensor:
        """Integer labels (N,) of the split, in the order of :meth:`Dataset.train_data`/``test_data``."""


class HeldOut(ABC):
    """Datasets with a validation split of their own, held out of the training rows (e.g. ``n_validation``)."""

    @abstractmethod
    def validation_data(self) -> torch.Tensor:
        """The validation rows in the model's space (0 rows when the dataset holds none out)."""


class TableData(ABC):
    """A user's (N, D) table in its own units: the model trains in standardized units (:attr:`standardization`
    maps file units to the model's), on batches that large files stream from disk (:meth:`batch_source`).

    ``streams`` is True when the training rows are read from the file in batches (never loaded whole).
    """

    streams: bool

    @property
    @abstractmethod
    def standardization(self) -> Standardization:
        """The affine map from the file's units to the model's (the identity without standardizing)."""

    @abstractmethod
    def batch_source(self) -> BatchSource:
        """The training rows as a :class:`~mflow_cli.training.BatchSource` (read from the file if it is large)."""

    @abstractmethod
    def check_rows(self, batch_size: int) -> None:
        """Raise :class:`~mflow_cli.errors.ConfigError` if the training split holds fewer rows than one batch."""


class Simulator(SampledDataset, KnownDensity):
    """A dataset drawn from a known distribution on a known manifold (the papers' simulators)."""
