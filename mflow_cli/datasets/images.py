"""Image manifolds: StyleGAN-like ``gan2d``/``gan64d`` data and CelebA from files, or procedural images.

Images are kept as 8-bit levels (N, 3, R, R) and handed to models preprocessed, channels first:

- ``preprocessing: glow``  y = x/256 − 0.5 (the M-flow/DNF default), ``logit``  y = logit(α + (1−2α)·x/256)
  (RealNVP), ``none``  y = x/256;
- x is the 8-bit level plus dequantization noise: U(0, 1) per batch during training
  (:meth:`ImageManifold.batch_transform`, ``dequantize: true``), the bin centre 0.5 otherwise.

So train/test tensors and samples all live in the preprocessed space; :meth:`to_unit` maps back to
[0, 1] for figures and :meth:`log_det_preprocess` converts densities to 8-bit pixel space (bits/dim).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Dataset
from .procedural import quantize, render, sample_parameters

Preprocessing = Literal["glow", "logit", "none"]
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
            raise ConfigError(f"{root}: holds {len(data)} images, not more than data.n_test={n_test}")
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
            raise ConfigError(f"{root}: holds {len(data)} images, not more than data.n_test={n_test}")
        return data[:-n_test], data[-n_test:]
    raise ConfigError(f"no image data in {root}: expected {expected_files(str(root))}")


# --------------------------------------------------------------------------- the dataset


class ImageManifold(Dataset):
    """Images from files (``source: files``, at ``path``) or rendered (``source: procedural``).

    ``n_params`` is the procedural manifold's dimension (2 for gan2d, 64 for gan64d). ``resolution``
    renders procedural images at that size and average-pools file images down to it (a divisor).
    """

    is_image = True
    n_bits = 8

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
        random_flips: bool = False,
        seed: int = 1,
    ) -> None:
        if resolution < 2:
            raise ConfigError("data.resolution must be at least 2")
        if n_params < 1 or n_train < 1 or n_test < 1:
            raise ConfigError("data.n_params, data.n_train and data.n_test must be at least 1")
        self.source, self.path, self.n_params = source, path, n_params
        self.n_train, self.n_test, self.resolution, self.seed = n_train, n_test, resolution, seed
        self.preprocessing, self.alpha = preprocessing, logit_alpha
        self.dequantize, self.random_flips = dequantize, random_flips
        self.data_shape = (3, resolution, resolution)
        self.manifold_dim = n_params if source == "procedural" else None
        self._levels: dict[str, torch.Tensor] = {}
        self._cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ raw levels
    def levels(self, split: str) -> torch.Tensor:
        """uint8 levels (N, 3, R, R) of the ``train`` or ``test`` split."""
        if not self._levels:
            if self.source == "procedural":
                for name, offset, n in (("train", 0, self.n_train), ("test", 1, self.n_test)):
                    gen = torch.Generator().manual_seed(self.seed * 2 + offset)
                    self._levels[name] = quantize(render(sample_parameters(n, self.n_params, gen), self.resolution))
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
            raise ConfigError(f"data.resolution={self.resolution} must divide the image size {size} ({self.path})")
        pooled = F.avg_pool2d(levels.float(), size // self.resolution)
        return torch.round(pooled).clamp(0, 255).to(torch.uint8)

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantized levels x in [0, 256) -> the model's space."""
        unit = x / 2**self.n_bits
        if self.preprocessing == "glow":
            return unit - 0.5
        if self.preprocessing == "logit":
            p = self.alpha + (1 - 2 * self.alpha) * unit
            return torch.log(p) - torch.log1p(-p)
        return unit

    def to_levels(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`preprocess`: the model's space -> [0, 256)."""
        if self.preprocessing == "glow":
            unit = y + 0.5
        elif self.preprocessing == "logit":
            unit = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        else:
            unit = y
        return unit * 2**self.n_bits

    def to_unit(self, y: torch.Tensor) -> torch.Tensor:
        """The model's space -> displayable images (N, R, R, 3) in [0, 1]."""
        img = (self.to_levels(y.reshape(-1, *self.data_shape)) / 2**self.n_bits).clamp(0, 1)
        return img.permute(0, 2, 3, 1)

    def log_det_preprocess(self, y: torch.Tensor) -> torch.Tensor:
        """log |det ∂y/∂x| per image, x in 8-bit level units: log p(x) = log p(y) + this."""
        dim = y[0].numel()
        log_scale = -self.n_bits * math.log(2)
        if self.preprocessing != "logit":
            return torch.full((y.shape[0],), dim * log_scale, dtype=y.dtype)
        # dy/dx = (1 − 2α)/256 / (p (1 − p)), p = sigmoid(y)
        flat = y.reshape(y.shape[0], -1)
        log_p1p = F.logsigmoid(flat) + F.logsigmoid(-flat)
        return dim * (log_scale + math.log(1 - 2 * self.alpha)) - log_p1p.sum(1)

    def _split(self, split: str) -> torch.Tensor:
        if split not in self._cache:
            self._cache[split] = self.preprocess(self.levels(split).float() + 0.5).float()
        return self._cache[split]

    def train_data(self) -> torch.Tensor:
        return self._split("train")

    def test_data(self) -> torch.Tensor:
        return self._split("test")

    def batch_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Replace the bin centres by uniform dequantization noise (and flip half the images)."""
        if self.dequantize:
            levels = torch.round(self.to_levels(x) - 0.5).clamp(0, 2**self.n_bits - 1)
            x = self.preprocess(levels + torch.rand_like(levels)).to(x.dtype)
        if self.random_flips:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x
