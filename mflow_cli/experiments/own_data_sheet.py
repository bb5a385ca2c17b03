"""Your own data, end to end, on a manifold known exactly: a curved 2-D sheet in R^6, rotated, scaled and shifted.

    python -m mflow_cli.experiments.own_data_sheet --out runs/own_data_sheet

Writes ``sheet.h5`` (20,000 rows), runs ``mflow dimension`` on it, trains ``dnf_own_data`` and ``mflow_own_data``
on it through the CLI, samples 5,000 points from each, and reports the samples' distance to the true sheet in the
file's units (mean, median, and the fraction within 0.05 and 0.1 of it) next to the data's own (0 + noise).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

SCALE, OFFSET, NOISE = 3.0, 5.0, 0.005


def rotation(dim: int = 6, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


def sheet(u: torch.Tensor) -> torch.Tensor:
    """The flat sheet f(u) in R^6 for parameters u in [-1, 1]^2 (before rotation, scale and shift)."""
    zeros = torch.zeros_like(u[:, 0])
    return torch.stack([u[:, 0], u[:, 1], torch.sin(2 * u[:, 0]) * torch.cos(u[:, 1]), u[:, 0] * u[:, 1],
                        zeros, zeros], 1)


def make_data(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = torch.as_tensor(rng.uniform(-1, 1, (n, 2)))
    flat = sheet(u).numpy() + NOISE * rng.normal(size=(n, 6))
    return flat @ rotation().T * SCALE + OFFSET


def distance_to_sheet(x: np.ndarray, steps: int = 200) -> np.ndarray:
    """Distance of rows of x (file units) to the true sheet: grid search over u, then Adam on u (batched)."""
    y = torch.as_tensor((x - OFFSET) / SCALE @ rotation(), dtype=torch.float64)
    axis = torch.linspace(-1, 1, 201, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    points = sheet(grid)
    u = torch.cat([grid[torch.cdist(part, points).argmin(1)] for part in torch.split(y, 2000)]).clone()
    u.requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (sheet(u.clamp(-1, 1)) - y).pow(2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (SCALE * (sheet(u.clamp(-1, 1)) - y).norm(dim=1)).numpy()


def _mflow(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mflow_cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"mflow {' '.join(map(str, args))}: {done.stderr.strip()}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/own_data_sheet"))
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=5000)
    args = parser.parse_args()
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    data_file = args.out / "sheet.h5"
    with h5py.File(data_file, "w") as fh:
        fh["events"] = make_data(args.rows).astype("float32")
    report = _mflow("dimension", data_file, "--plot", args.out / "dimension.png", "--force")
    suggested = int(report.split("suggested model.latent_dim:")[1].split()[0])
    console.print(f"mflow dimension suggests model.latent_dim {suggested}")
    table = Table(title=f"samples' distance to the true sheet (file units; data scale {SCALE}, noise "
                        f"{SCALE * NOISE:.3f} per coordinate)")
    for col in ("recipe", "mean", "median", "within 0.05", "within 0.1"):
        table.add_column(col)
    with h5py.File(data_file) as fh:
        floor = distance_to_sheet(fh["events"][: args.samples])
    table.add_row("the data itself", f"{floor.mean():.4f}", f"{np.median(floor):.4f}", f"{(floor < 0.05).mean():.1%}",
                  f"{(floor < 0.1).mean():.1%}")
    for recipe in ("dnf_own_data", "mflow_own_data"):
        run = args.out / recipe
        _mflow("train", recipe, "--set", f"data.path={data_file}", "--set", f"model.latent_dim={suggested}",
               "--set", "threads=1", "--out", run, "--force")
        _mflow("sample", run, "-n", args.samples, "-o", run / "samples.h5", "--force")
        with h5py.File(run / "samples.h5") as fh:
            dist = distance_to_sheet(fh["samples"][:])
        table.add_row(recipe, f"{dist.mean():.4f}", f"{np.median(dist):.4f}", f"{(dist < 0.05).mean():.1%}",
                      f"{(dist < 0.1).mean():.1%}")
    console.print(table)


if __name__ == "__main__":
    main()
