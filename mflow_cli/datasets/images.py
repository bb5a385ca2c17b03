"""Image manifolds: StyleGAN-like ``gan2d``/``gan64d`` data and CelebA from files, or procedural images.

Images are kept as 8-bit levels (N, 3, R, R) and handed to models preprocessed, channels first, by the
dataset's :class:`~mflow_cli.datasets.pixels.PixelSpace` (:attr:`ImageManifold.pixels`):

- ``preprocessing: glow``  y = p/256 − 0.5 (the M-flow/DNF default), ``logit``  y = logit(α + (1−2α)·p/256)
  (RealNVP), ``none``  y = p/256;
- p is the 8-bit level plus dequantization noise: U(0, 1) per batch during training
  (:meth:`ImageManifold.batch_transform`, ``dequantize: true``), the bin centre 0.5 otherwise.

So train/test tensors and samples all live in the preprocessed space; ``pixels.to_images`` maps back to
[0, 1] for figures and ``pixels.log_jacobian_to_pixels`` converts densities to 8-bit pixel space (bits/dim).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Dataset, PixelData
from .pixels import PixelSpace, Preprocessing
from .procedural import quantize, render, split_parameters

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_NAMES = ("{split}.npy", "x_{split}.npy", "{split}.h5", "{split}.hdf5", "x_{split}.h5")
H5_KEYS = ("x", "images", "data", "samples")


def expected_files(path: str) -> str:
    return (
        f"{path}/train.npy and {path}/test.npy (arrays (N, 64, 64, 3), uint8 or floats in [0, 1]; also "
        f"x_train.npy/x_test.npy or train.h5/test.h5), one .npy/.h5 file holding all images, or a folder of "
        f"PNG/JPEG images (optionally in train/ and test/ subfolders)"
    )


# --------------------------------------------------------------------------- reading files


def _to_levels(array: np.ndarray, source: str) -> torch.Tensor:
    """Any (N, H, W, 3) / (N, 3, H, W) array -> uint8 levels (N, 3, H, W)."""
    if array.ndim != 4 or 3 not in (array.shape[1], array.shape[3]):
        raise ConfigError(f"{source}: expected images of shape (N, H, W, 3) or (N, 3, H, W), got {array.shape}")
    if array.shape[3] == 3 and array.shape[1] != 3:
        array = np.transpose(array, (0, 3, 1, 2))
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    array = array.astype(np.float64)
    if array.size and np.nanmax(array) <= 1.0:  # floats in [0, 1], as the gan2d files store them
        array = np.round(array * 255.0)
    return torch.from_numpy(np.clip(array, 0, 255).astype(np.uint8))


def _read_array(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        try:
            return _to_levels(np.load(path, mmap_mode="r", allow_pickle=False), str(path))
        except ValueError as err:
            raise ConfigError(f"{path}: unreadable .npy file ({str(err).splitlines()[0][:100]})") from None
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names = [k for k in f if isinstance(f[k], h5py.Dataset)]
            key = next((k for k in H5_KEYS if k in names), names[0] if len(names) == 1 else None)
            if key is None:
                raise ConfigError(f"{path}: expected one dataset or one named {', '.join(H5_KEYS)}; found {names}")
            return _to_levels(f[key][()], f"{path}:{key}")
    except OSError as err:
        raise ConfigError(f"{path}: unreadable HDF5 file ({str(err).splitlines()[0][:100]})") from None


def _read_image_folder(folder: Path) -> torch.Tensor:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    try:
        from PIL import Image
    except ImportError:  # matplotlib reads PNG without Pillow
        Image = None
    arrays = []
    for file in files:
        if Image is not None:
            with Image.open(file) as img:
                arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        elif file.suffix.lower() == ".png":
            import matplotlib.image as mpimg

            arr = mpimg.imread(file)[..., :3]
            arrays.append(np.round(arr * 255).astype(np.uint8) if arr.dtype != np.uint8 else arr)
        else:
            raise ConfigError(f"{file}: reading JPEG needs Pillow (pip install pillow)")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ConfigError(f"{folder}: images differ in size ({sorted(shapes)[:3]}); resize them to one size first")
    return _to_levels(np.stack(arrays), str(folder))


def load_image_files(path: str, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test uint8 levels (N, 3, H, W) from ``path`` (see :func:`expected_files`)."""
    root = Path(path).expanduser()
    if root.is_file():
        if root.suffix not in (".npy", ".h5", ".hdf5"):
            raise ConfigError(f"{root}: not an image array; expected {expected_files(str(root.parent))}")
        data = _read_array(root)
        if len(data) <= n_test:
            raise ConfigError(f"{root}: holds {len(data)} images, not more than n_test={n_test}")
        return data[:-n_test], data[-n_test:]
    if not root.is_dir():
        where = f"{root} ({root.resolve()})" if not root.is_absolute() else str(root)
        raise ConfigError(f"image data not found at {where}: expected {expected_files(str(root))}")
    splits = {}
    for split in ("train", "test"):
        found = [root / pattern.format(split=split) for pattern in ARRAY_NAMES]
        found = [p for p in found if p.is_file()]
        if found:
            splits[split] = _read_array(found[0])
        elif (root / split).is_dir():
            splits[split] = _read_image_folder(root / split)
    if len(splits) == 2:
        return splits["train"], splits["test"]
    if splits:
        missing = "test" if "train" in splits else "train"
        found = next(iter(splits))
        raise ConfigError(f"{root}: found {found} data but no {missing} data; expected {expected_files(str(root))}")
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        data = _read_image_folder(root)
        if len(data) <= n_test:
            raise ConfigError(f"{root}: holds {len(data)} images, not more than n_test={n_test}")
        return data[:-n_test], data[-n_test:]
    raise ConfigError(f"no image data in {root}: expected {expected_files(str(root))}")


# --------------------------------------------------------------------------- the dataset


class ImageManifold(Dataset, PixelData):
    r"""Images from files (``source: files``, at ``path``) or rendered (``source: procedural``).

    The StyleGAN image manifolds ``gan2d``/``gan64d`` and CelebA of the M-flow and DNF papers, or, without
    those files, the procedural image manifold of :mod:`mflow_cli.datasets.procedural`. The levels go
    through :attr:`pixels` (a :class:`~mflow_cli.datasets.pixels.PixelSpace`): train/test data are the bin
    centres k + ½ preprocessed, and :meth:`batch_transform` redraws the dequantization noise per batch.

    Arguments:
        source: ``files`` (read from ``path``) or ``procedural`` (rendered from ``n_params`` numbers).
        path: The folder or file of the images (see :func:`expected_files`).
        n_params: The procedural manifold's dimension (2 for gan2d, 64 for gan64d).
        n_train: The number of training images.
        n_test: The number of test images.
        resolution: The image size R: procedural images are rendered at it, file images average-pooled
            down to it (a divisor of their size).
        preprocessing: ``glow`` (p/256 − 0.5, the M-flow/DNF default), ``logit`` or ``none``.
        logit_alpha: The α of the logit preprocessing.
        dequantize: Add U(0, 1) noise to the 8-bit levels of each training batch.
        flip: Mirror a random half of each training batch (CelebA).
        seed: The seed of the procedural images.
    """

    def __init__(
        self,
        source: Literal["files", "procedural"] = "files",
        path: str = "data/gan2d",
        n_params: int = 2,
        n_train: int = 10000,
        n_test: int = 1000,
        resolution: int = 64,
        preprocessing: Preprocessing = "glow",
        logit_alpha: float = 0.05,
        dequantize: bool = True,
        flip: bool = False,
        seed: int = 1,
    ) -> None:
        if resolution < 2:
            raise ConfigError(f"resolution must be at least 2, got {resolution}")
        for key, value in (("n_params", n_params), ("n_train", n_train), ("n_test", n_test)):
            if value < 1:
                raise ConfigError(f"{key} must be at least 1, got {value}")
        self.source, self.path, self.n_params = source, path, n_params
        self.n_train, self.n_test, self.resolution, self.seed = n_train, n_test, resolution, seed
        self.data_shape = (3, resolution, resolution)
        self._pixels = PixelSpace(
            self.data_shape, preprocessing=preprocessing, logit_alpha=logit_alpha, dequantize=dequantize, flip=flip
        )
        self.manifold_dim = n_params if source == "procedural" else None
        self._levels: dict[str, torch.Tensor] = {}
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def pixels(self) -> PixelSpace:
        return self._pixels

    # ------------------------------------------------------------------ raw levels
    def levels(self, split: str) -> torch.Tensor:
        """uint8 levels (N, 3, R, R) of the ``train`` or ``test`` split."""
        if not self._levels:
            if self.source == "procedural":
                for name, n in (("train", self.n_train), ("test", self.n_test)):
                    z = split_parameters(name, n, self.n_params, self.seed)
                    self._levels[name] = quantize(render(z, self.resolution))
            else:
                train, test = load_image_files(self.path, self.n_test)
                self._levels = {"train": self._resize(train[: self.n_train]), "test": self._resize(test)}
        return self._levels[split]

    def _resize(self, levels: torch.Tensor) -> torch.Tensor:
        size = levels.shape[-1]
        if levels.shape[-2] != size:
            raise ConfigError(f"{self.path}: images must be square, got {tuple(levels.shape[-2:])}")
        if size == self.resolution:
            return levels
        if size % self.resolution:
            raise ConfigError(f"resolution={self.resolution} must divide the image size {size} ({self.path})")
        pooled = F.avg_pool2d(levels.float(), size // self.resolution)
        return torch.round(pooled).clamp(0, 255).to(torch.uint8)

    # ------------------------------------------------------------------ model space
    def _split(self, split: str) -> torch.Tensor:
        if split not in self._cache:
            self._cache[split] = self.pixels.to_model(self.levels(split), dequantize=False).float()
        return self._cache[split]

    def train_data(self) -> torch.Tensor:
        """Training images in the model's space, at the bin centres."""
        return self._split("train")

    def test_data(self) -> torch.Tensor:
        """Test images in the model's space, at the bin centres."""
        return self._split("test")

    def batch_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Replace the bin centres by uniform dequantization noise (and flip half the images)."""
        if self.pixels.dequantize:
            x = self.pixels.to_model(self.pixels.to_levels(x)).to(x.dtype)
        return self.pixels.random_flip(x) if self.pixels.flip else x
