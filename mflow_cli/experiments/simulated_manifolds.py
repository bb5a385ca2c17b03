"""The README's table of manifold flows on simulated data: trains each recipe, evaluates it, writes Markdown.

    python -m mflow_cli.experiments.simulated_manifolds --jobs 2 --out runs/simulated_manifolds.md
    python -m mflow_cli.experiments.simulated_manifolds --only dnf_spiral      # the main job's row alone

Each row runs ``mflow train RECIPE --set ... --set threads=1`` and ``mflow evaluate`` in its own process (one
thread each, ``--jobs`` at a time), into ``RUNS/<row tag>``; a row whose run folder already holds an
``evaluation.json`` of the current code is reused with ``--reuse``. The table states the machine and threads.
"""

from __future__ import annotations

import argparse
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mflow_cli.experiments.common import train_and_evaluate


@dataclass(frozen=True)
class Row:
    tag: str
    recipe: str
    overrides: tuple[str, ...]
    settings: str


ROWS = (
    Row("dnf_spiral", "dnf_spiral", (), "default: 50 epochs, the main job"),
    Row("dnf_spiral_100", "dnf_spiral", ("train.epochs=100",), "100 epochs (paper)"),
    Row("mflow_spiral", "mflow_spiral", (), "50 + 50 epochs"),
    Row("flow_spiral", "flow_spiral", (), "100 epochs"),
    Row("pae_spiral_50", "pae_spiral", ("train.epochs.manifold=50", "train.epochs.density=50"), "50 + 50 epochs"),
    Row("dnf_circle_20", "dnf_circle", ("train.epochs=20",), "20 epochs"),
    Row("dnf_sphere", "dnf_sphere", (), "100 epochs (paper)"),
    Row("dnf_sphere_10", "dnf_sphere", ("train.epochs=10",), "10 epochs"),
)

SHOWN = (  # (key, label, format) in the order the results column lists them, where the evaluation has them
    ("kl_true_model_deflated", "KL deflated", "{:.3f}"),
    ("kl_true_model", "KL on the covered part", "{:.3f}"),
    ("true_mass_off_learned_manifold", "true mass missed", "{:.1%}"),
    ("model_mass_on_chart_grid_deflated", "grid mass (deflated)", "{:.3f}"),
    ("ks_density_deflated", "KS density (deflated)", "{:.3f}"),
    ("ks_samples", "KS samples", "{:.3f}"),
    ("test_log_likelihood_ambient", "ambient test LL", "{:.2f}"),
    ("reconstruction_mean_squared_distance", "reconstruction", "{:.3f}"),
    ("mean_sample_distance_to_manifold", "sample distance", "{:.3f}"),
)


def run_row(row: Row, runs: Path, reuse: bool) -> dict:
    return train_and_evaluate(row.recipe, runs / row.tag, row.overrides, reuse)


def results_text(metrics: dict) -> str:
    parts = [f"{label} {fmt.format(metrics[key])}" for key, label, fmt in SHOWN if metrics.get(key) is not None]
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/simulated"))
    parser.add_argument("--out", type=Path, default=Path("runs/simulated_manifolds.md"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="row tags to run (default: all)")
    parser.add_argument("--reuse", action="store_true", help="reuse rows whose evaluation.json exists")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.only or r.tag in args.only]
    console = Console()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda r: run_row(r, args.runs, args.reuse), rows))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread per run"
    lines = [f"Measured by `python -m mflow_cli.experiments.simulated_manifolds --jobs {args.jobs}` ({machine}, "
             f"{args.jobs} runs at a time; seed 1):", "", "| recipe (settings) | train min | results |",
             "|---|---:|---|"]
    table = Table("recipe", "settings", "train min", "results")
    for row, metrics in zip(rows, results, strict=True):
        lines.append(f"| `{row.recipe}` ({row.settings}) | {metrics['train_minutes']:.1f} | {results_text(metrics)} |")
        table.add_row(row.recipe, row.settings, f"{metrics['train_minutes']:.1f}", results_text(metrics))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
