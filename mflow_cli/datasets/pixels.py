"""The one map between 8-bit pixel levels and the values an image model sees, shared by every image dataset.

A :class:`PixelSpace` says how an image dataset turns integer levels k ∈ {0, …, 255} (N, C, H, W) into model
values y and back:

- binarization (``threshold``: k/255 > ½, ``stochastic``: u < k/255), for Bernoulli decoders; otherwise
- dequantization: p = k + u with u ~ U(0, 1) (``dequantize``), else the bin centre p = k + ½; then
- the preprocessing of the continuous pixel value p ∈ [0, 256): ``glow`` y = p/256 − ½ (the M-flow/DNF
  code), ``logit`` y = logit(α + (1 − 2α) p/256) (RealNVP, Dinh et al. 2017, sec. 4.1), ``none`` y = p/256;
- random horizontal flips of half the images (``flip``), a training augmentation.

Images are channels first (N, C, H, W) everywhere. Densities of continuous data convert to densities over
pixel values in [0, 256)^D, the space bits/dim are quoted in, with :meth:`PixelSpace.log_jacobian_to_pixels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError

Preprocessing = Literal["glow", "logit", "none"]
Binarize = Literal["none", "threshold", "stochastic"]
N_BITS = 8
N_LEVELS = 2**N_BITS


@dataclass(frozen=True)
class PixelSpace:
    r"""The preprocessing between 8-bit pixel levels and a model's values (see the module docstring).

    Arguments:
        image_shape: The image shape (C, H, W).
        preprocessing: The map from pixel values p in [0, 256) to model values: ``glow`` p/256 − 0.5,
            ``logit`` logit(α + (1 − 2α) p/256), ``none`` p/256.
        logit_alpha: The α of the logit preprocessing, in [0, 0.5).
        dequantize: Add uniform noise U(0, 1) to the levels in training (the bin centre k + 0.5 without).
        flip: Mirror a random half of each training batch along the width.
        binarize: ``threshold`` (k/255 > 0.5) or ``stochastic`` (u < k/255) binary pixels instead of
            dequantized ones; ``none`` keeps the levels.
    """

    image_shape: tuple[int, int, int]
    preprocessing: Preprocessing = "glow"
    logit_alpha: float = 0.05
    dequantize: bool = True
    flip: bool = False
    binarize: Binarize = "none"

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ConfigError(f"image_shape must be (C, H, W) with positive sizes, got {self.image_shape}")
        if self.preprocessing not in ("glow", "logit", "none"):
            raise ConfigError(f"preprocessing must be glow, logit or none, got {self.preprocessing!r}")
        if self.binarize not in ("none", "threshold", "stochastic"):
            raise ConfigError(f"binarize must be none, threshold or stochastic, got {self.binarize!r}")
        if not 0 <= self.logit_alpha < 0.5:
            raise ConfigError(f"logit_alpha must be in [0, 0.5), got {self.logit_alpha}")
        if self.binarize != "none" and (self.dequantize or self.preprocessing != "none"):
            raise ConfigError("binarize cannot be combined with dequantize or a glow/logit preprocessing")

    # ------------------------------------------------------------------ continuous pixel values <-> model
    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Continuous pixel values p in [0, 256) -> model values y (no noise, no binarization)."""
        unit = pixels / N_LEVELS
        if self.preprocessing == "glow":
            return unit - 0.5
        if self.preprocessing == "logit":
            s = self.logit_alpha + (1 - 2 * self.logit_alpha) * unit
            return torch.log(s) - torch.log1p(-s)
        return unit

    def _unit(self, y: torch.Tensor) -> torch.Tensor:
        if self.preprocessing == "glow":
            return y + 0.5
        if self.preprocessing == "logit":
            return (torch.sigmoid(y) - self.logit_alpha) / (1 - 2 * self.logit_alpha)
        return y

    def to_pixels(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`preprocess`: model values -> continuous pixel values in [0, 256)."""
        return self._unit(y) * N_LEVELS

    # ------------------------------------------------------------------ 8-bit levels <-> model
    def to_model(
        self, levels: torch.Tensor, generator: torch.Generator | None = None, dequantize: bool | None = None
    ) -> torch.Tensor:
        """8-bit levels k (N, C, H, W) (integer values, any dtype) -> model values, same shape.

        Binarized datasets threshold or sample k/255; the others preprocess k + u, u ~ U(0, 1) drawn from
        ``generator`` when dequantizing (``dequantize`` overrides :attr:`dequantize`), else u = ½.
        """
        levels = levels.float() if not levels.is_floating_point() else levels
        if self.binarize == "threshold":
            return (levels / 255.0 > 0.5).to(levels.dtype)
        if self.binarize == "stochastic":
            u = torch.rand(levels.shape, dtype=levels.dtype, device=levels.device, generator=generator)
            return (u < levels / 255.0).to(levels.dtype)
        noisy = self.dequantize if dequantize is None else dequantize
        if noisy:
            u = torch.rand(levels.shape, dtype=levels.dtype, device=levels.device, generator=generator)
        else:
            u = 0.5
        return self.preprocess(levels + u)

    def to_levels(self, y: torch.Tensor) -> torch.Tensor:
        """Model values -> the 8-bit levels (float, 0 … 255) they were made from (the inverse of :meth:`to_model`)."""
        if self.binarize != "none":
            return torch.round(y * 255).clamp(0, N_LEVELS - 1)
        return torch.round(self.to_pixels(y) - 0.5).clamp(0, N_LEVELS - 1)

    def to_images(self, y: torch.Tensor) -> torch.Tensor:
        """Model values (N, C, H, W) or flat (N, C·H·W) -> displayable images (N, C, H, W) in [0, 1]."""
        y = y.reshape(-1, *self.image_shape)
        if self.binarize != "none":
            return y.clamp(0, 1)
        return self._unit(y).clamp(0, 1)

    def random_flip(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mirror a random half of the images (N, C, H, W) along the width (the last axis)."""
        mask = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
        return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)

    def training_batch(self, levels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A training batch: :meth:`to_model` (with dequantization noise), then :meth:`random_flip` if :attr:`flip`."""
        y = self.to_model(levels, generator)
        return self.random_flip(y, generator) if self.flip else y

    # ------------------------------------------------------------------ densities
    def log_jacobian_to_pixels(self, y: torch.Tensor) -> torch.Tensor:
        """log|det ∂y/∂p| (N,) of the map from pixel values p ∈ [0, 256)^D to the model values y (N, ...).

        A log density over model values plus this term is a log density over [0, 256)^D, the space bits/dim
        are quoted in: p/256 gives −D log 256 (``glow``, ``none``); the logit adds
        Σ log((1 − 2α) / (s(1 − s))), s = σ(y). Binarized data has a mass, not a density: the term is then
        only the scaling.
        """
        flat = y.reshape(y.shape[0], -1)
        out = torch.full((flat.shape[0],), -flat.shape[1] * math.log(N_LEVELS), dtype=flat.dtype, device=flat.device)
        if self.preprocessing == "logit":
            log_s, log_1ms = F.logsigmoid(flat), F.logsigmoid(-flat)
            out = out + (math.log(1 - 2 * self.logit_alpha) - log_s - log_1ms).sum(-1)
        return out
