"""Small stand-ins shared by the tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Literal

import torch

from mflow_cli.datasets.base import Dataset, Labelled, PixelData
from mflow_cli.datasets.pixels import PixelSpace


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
