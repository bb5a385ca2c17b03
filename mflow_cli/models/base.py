"""The interface every model kind offers to the trainer and the CLI."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterable

import torch
from torch import nn


class Model(nn.Module):
    """A trainable generative model. Subclasses set ``family`` (which evaluator/plotter applies)."""

    family: str = ""
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

    def loss(self, x: torch.Tensor, phase: str) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``latents`` (N, latent_dim) and, where the model has it, ``log_prob`` (N,)."""
        raise NotImplementedError


def variant(base: type, name: str, doc: str, **defaults) -> type:
    """A subclass of ``base`` that differs only in constructor defaults (e.g. DNF vs M-flow).

    Its signature shows the new defaults, so recipe validation and the resolved recipe see them.
    """
    sig = inspect.signature(base)
    params = [p.replace(default=defaults.pop(p.name)) if p.name in defaults else p for p in sig.parameters.values()]
    if defaults:
        raise TypeError(f"{name}: {base.__name__} has no arguments {sorted(defaults)}")
    new_sig = sig.replace(parameters=params)

    @functools.wraps(base.__init__)
    def __init__(self, *args, **kwargs):
        bound = new_sig.bind(*args, **kwargs)
        bound.apply_defaults()
        base.__init__(self, *bound.args, **bound.kwargs)

    cls = type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": base.__module__})
    cls.__signature__ = new_sig
    return cls


def standard_normal_log_prob(z: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """Sum over the last dim of log N(z; 0, std²)."""
    d = z.shape[-1]
    return -0.5 * (z / std).pow(2).sum(-1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))
