"""Toy 3-D comparison of the VQ-Flow paper: data | classic RealNVP | VQ-RealNVP, one row per shape.

Train and evaluate the runs first (one at a time), e.g. for the linked rings:

    mflow train recipes/realnvp_toy3d_rings.yaml && mflow evaluate runs/realnvp_toy3d_rings
    mflow train recipes/vqflow_toy3d_rings.yaml && mflow evaluate runs/vqflow_toy3d_rings

then ``python -m mflow_cli.experiments.vq_flow_toy3d rings [torus spheres] --out runs/vq_flow_toy3d.png`` draws the
figure and prints held-out log-likelihood and the mean distance of samples to the true support.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from mflow_cli.app.runs import build_dataset, load_run
from mflow_cli.datasets.toy3d import sample_support
from mflow_cli.plots.common import pyplot, save
from mflow_cli.plots.vq_flow import SUPPORT_POINTS, scatter3d, view_limits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="+", choices=["rings", "torus", "spheres"])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--out", default="runs/vq_flow_toy3d.png")
    parser.add_argument("-n", type=int, default=3000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    plt = pyplot()
    fig = plt.figure(figsize=(12.6, 4.2 * len(args.shapes)))
    keys = ("test_log_likelihood", "mean_sample_distance_to_support", "atlas_mass")
    table = Table("run", *keys)
    for row, shape in enumerate(args.shapes):
        panels = []
        for col, name in enumerate((f"realnvp_toy3d_{shape}", f"vqflow_toy3d_{shape}")):
            run = Path(args.runs) / name
            recipe, model = load_run(run, device="cpu")
            torch.manual_seed(0)
            with torch.no_grad():
                x, k, _ = model.sample_charts(args.n)
            label = (f"classic RealNVP samples ({args.n})" if col == 0 else
                     f"VQ-RealNVP samples ({args.n}, colour: chart)")
            panels.append((label, x, k.float() if model.num_charts > 1 else None))
            ev = json.loads((run / "evaluation.json").read_text()) if (run / "evaluation.json").is_file() else {}
            table.add_row(name, *(f"{ev.get(key, float('nan')):.4f}" for key in keys))
        dataset = build_dataset(recipe)
        data = dataset.test_data()[: args.n]
        support = sample_support(dataset.shape, SUPPORT_POINTS, torch.Generator().manual_seed(0)).float()
        limits = view_limits(torch.cat([data, support]))
        for col, (title, x, colour) in enumerate([(f"test data ({len(data)})", data, None), *panels]):
            ax = fig.add_subplot(len(args.shapes), 3, 3 * row + col + 1, projection="3d")
            scatter3d(ax, x, f"{shape}: {title}", colour, limits, 1.0, support)  # small: the support shows
    fig.suptitle("toy 3-D data: test points, classic RealNVP and VQ-RealNVP samples over the true support (grey)",
                 fontsize=11)
    console = Console()
    console.print(table)
    console.print(f"wrote {save(fig, Path(args.out))}")


if __name__ == "__main__":
    main()
