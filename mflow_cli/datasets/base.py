"""What every dataset offers: train/test tensors and the shape of one sample."""

from __future__ import annotations

import torch


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


class Simulator(SampledDataset):
    """A dataset drawn from a known distribution on a known manifold.

    Subclasses give ``manifold_dim`` and a quadrature over the manifold (:meth:`manifold_grid`) with
    the true density w.r.t. the manifold's volume measure, so evaluation can compare against it.
    """

    manifold_dim: int

    def manifold_grid(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Points ``x`` (n, D) on the manifold, true ``log p(x)`` w.r.t. volume, and volume weights.

        ``sum(weights * exp(log_p))`` approximates the total mass (1 up to truncation).
        """
        raise NotImplementedError
