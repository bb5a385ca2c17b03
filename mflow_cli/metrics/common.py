"""What the evaluators share: range checks for their option dataclasses and JSON-safe metric dicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from .. import io
from ..errors import ConfigError


def at_least(name: str, value: float, minimum: float) -> None:
    """Raise :class:`ConfigError` ``"<name> must be >= <minimum>, got <value>"`` when ``value < minimum``."""
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def positive(name: str, value: float) -> None:
    """Raise :class:`ConfigError` ``"<name> must be > 0, got <value>"`` unless ``value > 0``."""
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def finite_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics with every non-finite float (inf, nan) replaced by None (JSON has neither)."""
    return {k: io.finite_or_none(v) if isinstance(v, float) else v for k, v in metrics.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


UNITS = (
    "nats", "nats per point", "bits/dim", "squared distance", "distance", "fraction", "count", "seconds", "points/s",
)
"""The units a :class:`Metric` is reported in (distances in the data's own coordinates)."""


@dataclass(frozen=True)
class Metric:
    """What one key of an evaluator's output means: shown in ``mflow evaluate``'s table, the JSON's ``metadata``
    block and the README glossary.

    ``name`` says what the number is, in words (the table's "meaning" column; ``doc`` explains it further);
    ``unit`` is one of :data:`UNITS` (``"nats"``, ``"nats per point"``, ``"bits/dim"``, ``"squared distance"``,
    ``"distance"``, ``"fraction"``, ``"count"``, ``"seconds"``, ``"points/s"``); ``better`` says which direction
    is better (``"higher"``, ``"lower"``, ``"closer to 1"`` for masses that should be 1, ``"n/a"`` for settings
    and counts); ``timing`` marks machine-dependent timings (``*_per_s``, ``*_seconds``), reported in their own
    table.
    """

    name: str
    unit: str
    better: Literal["higher", "lower", "closer to 1", "n/a"]
    doc: str
    timing: bool = False


def sample_in_batches(model: torch.nn.Module, n: int, batch_size: int) -> torch.Tensor:
    """``n`` model samples drawn ``batch_size`` at a time, on the CPU."""
    with torch.no_grad():
        return torch.cat([model.sample(min(batch_size, n - s)).cpu() for s in range(0, n, batch_size)])
