"""The interface every model kind offers to the trainer and the CLI."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


class Model(nn.Module):
    """A trainable generative model: its training phases, a loss per phase, sampling and encoding."""

    data_shape: tuple[int, ...]
    latent_dim: int

    @classmethod
    def phase_names(cls, **config) -> list[str]:
        """Training phases for a given constructor config (e.g. ``["manifold", "density"]``)."""
        return ["joint"]

    def phases(self) -> list[str]:
        return ["joint"]

    def phase_parameters(self, phase: str) -> Iterable[nn.Parameter]:
        return self.parameters()

    def start_phase(self, phase: str, training_rows: Callable[[int], torch.Tensor]) -> None:
        """Called by the training loop once as ``phase`` begins (not when it resumes): set up what the phase
        starts from, e.g. parameters read off an earlier phase's result. ``training_rows(n)`` gives up to
        ``n`` training rows as the loss sees them (a fixed draw; the training RNG is not moved). Nothing by
        default."""

    def loss(self, x: torch.Tensor, phase: str) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``latents`` (N, latent_dim) and, where the model has it, ``log_prob`` (N,)."""
        raise NotImplementedError


def standard_normal_log_prob(z: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """Sum over the last dim of log N(z; 0, std²)."""
    d = z.shape[-1]
    return -0.5 * (z / std).pow(2).sum(-1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))
