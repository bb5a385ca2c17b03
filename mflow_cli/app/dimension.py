"""``mflow dimension``: the intrinsic dimension of a user's table, and the ``mflow train`` line that uses it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from ..datasets.arrays import ArrayDataset
from ..metrics.intrinsic_dimension import IntrinsicDimension, estimate_intrinsic_dimension
from ..plots.intrinsic_dimension import plot_intrinsic_dimension

ESTIMATORS = {
    "two_nn": "TwoNN: ratio of the 2nd to 1st neighbour distance (Facco et al. 2017)",
    "mle": "Levina–Bickel maximum likelihood, averaged over the k range of the figure",
    "local_pca": "local PCA: components holding 95% of each neighbourhood's variance",
}


@dataclass(frozen=True)
class DimensionReport:
    """The estimates, the table rows, the suggested ``model.latent_dim`` and the command that uses it."""

    result: IntrinsicDimension
    dim: int
    rows: list[tuple[str, str]]
    suggestion: int
    train_command: str


def estimate_file_dimension(
    path: Path, *, key: str | None, columns: list[str | int] | None, method: str, max_points: int, seed: int,
    plot: Path, recipe: str = "dnf_own_data",
) -> DimensionReport:
    """Read ``path`` as ``data.name: array`` does (checked, standardized), estimate, draw ``plot``."""
    dataset = ArrayDataset(path, key=key, columns=columns, test_fraction=0.5, n_test=max_points, seed=seed)
    rows = dataset.test_data() if dataset.streams else torch.cat([dataset.train_data(), dataset.test_data()])
    result = estimate_intrinsic_dimension(rows.double().numpy(), max_points=max_points, seed=seed)
    plot_intrinsic_dimension(result, plot)
    suggestion = result.suggested_latent_dim if method == "all" else max(1, round(result.estimates[method]))
    suggestion = min(suggestion, dataset.data_shape[0])
    sets = [f"data.path={path}"] + ([f"data.key={key}"] if key else [])
    if columns:
        sets.append("data.columns=[" + ",".join(str(c) for c in columns) + "]")
    sets.append(f"model.latent_dim={suggestion}")
    command = "mflow train " + recipe + "".join(f" --set {shlex.quote(s)}" for s in sets)
    return DimensionReport(result, dataset.data_shape[0], list(ESTIMATORS.items()), suggestion, command)
