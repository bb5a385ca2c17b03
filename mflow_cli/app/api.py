"""The Python API for scripting: ``import mflow_cli as mf``.

``mf.read_recipe(path)`` validates a recipe, ``mf.train(recipe)`` trains it into a run folder and
``mf.load_run(path)`` opens one; a :class:`Run` samples, encodes, scores and projects data given as NumPy arrays
or tensors, in batches, and returns NumPy arrays by default. Nothing here changes process-wide torch settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..models.interfaces import AtlasModel, ManifoldModel
from . import runs
from .recipe import Recipe, apply_overrides, load_recipe, parse_overrides, read_yaml, validate
from .recipes import resolve_recipe

ArrayLike = np.ndarray | torch.Tensor


def read_recipe(path: str | Path, overrides: Mapping[str, Any] | list[str] | None = None) -> Recipe:
    """Read and validate a recipe file (or a shipped recipe's name, e.g. ``"dnf_spiral"``); ``overrides`` as
    ``{"train.epochs": 5}`` or ``["train.epochs=5"]``."""
    path = resolve_recipe(path)
    if isinstance(overrides, Mapping):
        doc = apply_overrides(read_yaml(path), list(overrides.items()))
        return validate(doc, str(path), default_name=Path(path).stem)
    return load_recipe(path, overrides)


class Run:
    """A trained run folder: its :attr:`recipe`, its :attr:`model` (in eval mode) and batched inference.

    Inputs are (N, *data_shape) arrays or tensors; outputs are NumPy arrays unless ``numpy=False``.
    """

    def __init__(self, path: Path, opened: runs.OpenRun) -> None:
        self.path, self._opened = path, opened
        self.recipe, self.model = opened.recipe, opened.model

    @property
    def units(self):
        """The standardization between your data's units and the model's (own data), else None."""
        return self._opened.units

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, kind={self.recipe.model['kind']!r}, data={self.recipe.data['name']!r})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _tensor(self, x: ArrayLike) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
        shape = tuple(self.model.data_shape)
        if x.ndim == len(shape):  # one example
            x = x[None]
        if tuple(x.shape[1:]) != shape:
            expect = "(N, " + ", ".join(map(str, shape)) + ")"
            raise ConfigError(f"inputs of shape {tuple(x.shape)} do not match the model's {expect}")
        return x

    @staticmethod
    def _out(x: torch.Tensor, numpy: bool) -> np.ndarray | torch.Tensor:
        return x.detach().cpu().numpy() if numpy else x.detach().cpu()

    def sample(self, n: int, seed: int | None = None, batch_size: int = 10000, numpy: bool = True):
        """``n`` samples (n, *data_shape); ``seed`` makes them reproducible without touching the global RNG."""
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            parts = [self.model.sample(min(batch_size, n - start)).cpu() for start in range(0, n, batch_size)]
        return self._out(self._opened.to_original_units(torch.cat(parts)), numpy)

    def encode(self, x: ArrayLike, batch_size: int = 1000, numpy: bool = True) -> dict[str, Any]:
        """What ``mflow encode`` writes, per row of x: ``latents``, ``log_prob`` and the kind's own outputs."""
        x = self._opened.to_model_units(self._tensor(x))
        parts: dict[str, list[torch.Tensor]] = {}
        for chunk in torch.split(x, batch_size):
            chunk = chunk.to(self.device)
            out = self._opened.outputs_to_original_units(chunk, self.model.encode(chunk))
            for key, value in out.items():
                parts.setdefault(key, []).append(value.detach().cpu())
        return {key: self._out(torch.cat(values), numpy) for key, values in parts.items()}

    def log_prob(self, x: ArrayLike, batch_size: int = 1000, numpy: bool = True):
        """The model's log density of each row: on its manifold at the projection (manifold models), the atlas
        density (VQ-Flows); flow-VAEs have no closed form (use ``encode(x)["elbo"]``)."""
        if not isinstance(self.model, (ManifoldModel, AtlasModel)):
            raise ConfigError(f"{self.recipe.model['kind']} has no exact log density; use encode(x)['elbo']")
        x = self._opened.to_model_units(self._tensor(x))
        parts = []
        with torch.no_grad():
            for chunk in torch.split(x, batch_size):
                chunk = chunk.to(self.device)
                if isinstance(self.model, ManifoldModel):
                    log_p = self.model.log_prob_manifold(chunk)[0]
                else:
                    log_p = self.model.log_prob(chunk)
                parts.append(self._opened.outputs_to_original_units(chunk, {"log_prob": log_p})["log_prob"].cpu())
        return self._out(torch.cat(parts), numpy)

    def project(self, x: ArrayLike, batch_size: int = 1000, numpy: bool = True):
        """The projection of each row onto the learned manifold, g(u(x)), shaped like x (manifold models)."""
        if not isinstance(self.model, ManifoldModel):
            raise ConfigError(f"{self.recipe.model['kind']} learns no manifold to project onto")
        x = self._opened.to_model_units(self._tensor(x))
        with torch.no_grad():
            parts = [self.model.decode(self.model.project(c.to(self.device))[0]).cpu()
                     for c in torch.split(x, batch_size)]
        return self._out(self._opened.to_original_units(torch.cat(parts).reshape(x.shape)), numpy)


def load_run(path: str | Path, device: str | None = None) -> Run:
    """Open a run folder written by ``mflow train`` (or :func:`train`)."""
    return Run(Path(path), runs.open_run(path, device))


def train(
    recipe: str | Path | Recipe | Mapping[str, Any],
    overrides: Mapping[str, Any] | list[str] | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
) -> Run:
    """Train a recipe (a file, a mapping or a :class:`Recipe`) into ``out`` (default ``runs/<name>``); return the Run.

    Training sets torch's thread count from the recipe (``threads``), as ``mflow train`` does.
    """
    if isinstance(recipe, Recipe):
        spec = validate(apply_overrides(recipe.to_dict(), _pairs(overrides)), recipe.source) if overrides else recipe
    elif isinstance(recipe, Mapping):
        spec = validate(apply_overrides(dict(recipe), _pairs(overrides)), "recipe")
    else:
        spec = read_recipe(recipe, overrides)
    out_dir = Path(out) if out is not None else Path("runs") / spec.name
    runs.train_run(spec, out_dir, resume=resume, force=force)
    return load_run(out_dir)


def _pairs(overrides: Mapping[str, Any] | list[str] | None) -> list[tuple[str, Any]]:
    if overrides is None:
        return []
    return list(overrides.items()) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
