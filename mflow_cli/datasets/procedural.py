"""A procedural image manifold with a known dimension: images rendered from ``n_params`` numbers.

Stands in for the StyleGAN image manifolds of the M-flow/DNF papers (``gan2d``: 2 latent dims,
``gan64d``: 64) where that data is absent. Each image is a smooth function of its parameters
z ~ N(0, I_n): coloured Gaussian blobs over a fixed background gradient, four parameters per blob
(x, y, log width, brightness; the last blob may take fewer). Blob colours differ, so swapping
blobs changes the image and the map z -> image is injective away from coincidences: the images
lie on an n-dimensional manifold in R^(3·R·R). The rendering is continuous in the pixel grid, so
the same manifold can be drawn at any ``resolution`` (tests use 8×8 or 16×16).
"""

from __future__ import annotations

import math

import torch

PARAMS_PER_BLOB = 4
_WORLD_SEED = 20210527  # fixes blob colours and defaults: the manifold, not the sample


def _world(n_blobs: int) -> dict[str, torch.Tensor]:
    """Fixed per-blob constants (colour, default position/width/brightness), the same for every run."""
    gen = torch.Generator().manual_seed(_WORLD_SEED + n_blobs)
    hue = (torch.arange(n_blobs, dtype=torch.float32) / max(n_blobs, 1) + 0.13) % 1.0
    angle = 2 * math.pi * (hue[:, None] - torch.tensor([0.0, 1 / 3, 2 / 3], dtype=torch.float32))
    colour = 0.55 + 0.45 * torch.cos(angle)  # a hue wheel: distinct RGB colours
    return {
        "colour": colour,
        "centre": 0.25 + 0.5 * torch.rand(n_blobs, 2, generator=gen, dtype=torch.float32),
        "width": torch.full((n_blobs,), 0.16 if n_blobs == 1 else 0.11, dtype=torch.float32),
    }


def render(z: torch.Tensor, resolution: int, chunk: int = 256) -> torch.Tensor:
    """Images (N, 3, R, R) with values in [0, 1) for parameters ``z`` (N, n_params), float32.

    Parameter 4k+0 / 4k+1 moves blob k (x / y, through Φ into [0.1, 0.9]); 4k+2 scales its width
    by exp(0.35·tanh z); 4k+3 scales its brightness by 1 + 0.5·tanh z. Intensity is
    1 − exp(−(background + Σ blobs)), a smooth squashing into [0, 1). Rendered ``chunk`` images at a time.
    """
    if len(z) > chunk:
        return torch.cat([render(part, resolution, chunk) for part in torch.split(z, chunk)])
    z = z.float()
    n, n_params = z.shape
    n_blobs = max(1, math.ceil(n_params / PARAMS_PER_BLOB))
    world = _world(n_blobs)
    padded = torch.zeros(n, n_blobs * PARAMS_PER_BLOB, dtype=torch.float32)
    padded[:, :n_params] = z
    p = padded.reshape(n, n_blobs, PARAMS_PER_BLOB)
    controlled = torch.zeros(n_blobs * PARAMS_PER_BLOB, dtype=torch.bool)
    controlled[:n_params] = True
    controlled = controlled.reshape(n_blobs, PARAMS_PER_BLOB)
    normal_cdf = 0.5 * (1 + torch.erf(p[..., :2] / math.sqrt(2)))
    centre = torch.where(controlled[:, :2], 0.1 + 0.8 * normal_cdf, world["centre"])  # (N, B, 2)
    width = world["width"] * torch.exp(0.35 * torch.tanh(p[..., 2]))  # (N, B)
    bright = 1.0 + 0.5 * torch.tanh(p[..., 3])

    axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")  # (R, R)
    dx = xx[None, None] - centre[..., 0, None, None]
    dy = yy[None, None] - centre[..., 1, None, None]
    blob = torch.exp(-(dx**2 + dy**2) / (2 * width[..., None, None] ** 2))  # (N, B, R, R)
    light = (1.6 / math.sqrt(n_blobs)) * torch.einsum("nb,bc,nbhw->nchw", bright, world["colour"], blob)
    background = torch.stack([0.15 + 0.25 * yy, 0.2 + 0.1 * xx, 0.35 - 0.2 * yy])  # (3, R, R)
    return 1.0 - torch.exp(-(background[None] + light))


def quantize(images: torch.Tensor, n_bits: int = 8) -> torch.Tensor:
    """[0, 1) floats -> integer levels 0 .. 2^bits − 1 (uint8 for 8 bits)."""
    levels = 2**n_bits
    return torch.clamp(torch.floor(images * levels), 0, levels - 1).to(torch.uint8)


def sample_parameters(n: int, n_params: int, generator: torch.Generator) -> torch.Tensor:
    """The latent parameters z ~ N(0, I), as for StyleGAN's latent space."""
    return torch.randn(n, n_params, generator=generator, dtype=torch.float64)


SPLIT_SEED_OFFSETS = {"train": 0, "test": 1}


def split_parameters(split: str, n: int, n_params: int, seed: int) -> torch.Tensor:
    """The true parameters z (n, n_params), float64, of the procedural ``split`` (``train``/``test``) of ``seed``.

    The images of :class:`~mflow_cli.datasets.images.ImageManifold` (``source: procedural``) are
    ``quantize(render(split_parameters(split, n, n_params, seed), resolution))``: a generator seeded
    ``2·seed + offset`` per split (train 0, test 1).
    """
    gen = torch.Generator().manual_seed(seed * 2 + SPLIT_SEED_OFFSETS[split])
    return sample_parameters(n, n_params, gen)
