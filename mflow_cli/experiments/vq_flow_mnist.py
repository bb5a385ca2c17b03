"""VQ-Flows against their classic flows on MNIST, over seeds: the README's VQ-Flow MNIST table.

    python -m mflow_cli.experiments.vq_flow_mnist --jobs 2 --seeds 1 2 3 --runs runs/vq_flow_mnist
    python -m mflow_cli.experiments.vq_flow_mnist --reuse          # rebuild the table from finished runs

For each pair (``realnvp_mnist`` / ``vqflow_mnist_realnvp``, ``maf_mnist`` / ``vqflow_mnist_maf``: the same flow,
one chart against an atlas, the same epochs of the density phase) and each seed, runs ``mflow train RECIPE --set
seed=S --set threads=1`` and ``mflow evaluate`` in its own process (``--jobs`` at a time) into
``RUNS/<recipe>_s<S>``. A run folder that already holds an ``evaluation.json`` is reused with ``--reuse``.
Writes ``RUNS/vq_flow_mnist.md``: per recipe the mean ± standard deviation over the seeds of the test bits/dim
(mean over all 10,000 test images, median, worst image), the Fréchet distance of classifier features, the charts
used, the atlas mass (the share of sampling proposals kept), the flow's parameter count and the training
minutes; then one row per run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mflow_cli.experiments.common import train_and_evaluate

PAIRS = (("realnvp_mnist", "vqflow_mnist_realnvp"), ("maf_mnist", "vqflow_mnist_maf"))
SHOWN = (  # (evaluation key, column, format)
    ("test_bits_per_dim", "mean bits/dim", "{:.3f}"),
    ("median_test_bits_per_dim", "median bits/dim", "{:.3f}"),
    ("worst_test_bits_per_dim", "worst image bits/dim", "{:,.1f}"),
    ("frechet_feature_distance", "FID (classifier features)", "{:.2f}"),
    ("charts_used", "charts used", "{:.0f}"),
    ("atlas_mass", "atlas mass (samples kept)", "{:.2f}"),
    ("train_minutes", "train min", "{:.1f}"),
)


def flow_parameters(run_dir: Path) -> int:
    """The density model's parameters (chart flow, conformal maps, chart weights), not the VQ autoencoder's."""
    from mflow_cli.app.runs import open_run

    model = open_run(run_dir).model
    skipped = {id(p) for p in model.vq.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skipped)


def run_one(recipe: str, seed: int, runs: Path, reuse: bool, overrides: tuple[str, ...] = ()) -> dict:
    out = runs / f"{recipe}_s{seed}"
    settings = (f"seed={seed}", f"evaluate.fid_cache_dir={runs / '.fid_cache'}", *overrides)
    metrics = train_and_evaluate(recipe, out, settings, reuse)
    metrics["flow_parameters"] = flow_parameters(out)
    return metrics


def prepare_feature_cache(runs: Path) -> None:
    """Train the FID feature classifier once, before parallel evaluations would race to write it."""
    from mflow_cli.app.recipe import load_recipe
    from mflow_cli.app.recipes import resolve_recipe
    from mflow_cli.app.runs import build_dataset
    from mflow_cli.metrics.vq_flow import feature_network

    recipe = load_recipe(resolve_recipe(PAIRS[0][0]))
    feature_network(build_dataset(recipe), None, str(runs / ".fid_cache"))


def _value(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def summary(values: list[float | None], fmt: str) -> str:
    """mean ± s.d. over the seeds (the s.d. from n − 1), '—' where a run has no value."""
    if not values or any(v is None for v in values):
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def markdown(results: dict[tuple[str, int], dict], seeds: list[int], jobs: int) -> str:
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    head = ["recipe", "flow parameters", *(label for _, label, _ in SHOWN)]
    n_test = min(int(m["n_test"]) for m in results.values())
    lines = [
        f"Measured by `python -m mflow_cli.experiments.vq_flow_mnist --jobs {jobs} --seeds "
        f"{' '.join(map(str, seeds))}` ({machine}, one thread per run, {jobs} runs at a time); mean ± s.d. over "
        f"{len(seeds)} seeds; bits/dim over all {n_test:,} test images:", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    for recipe in dict.fromkeys(recipe for recipe, _ in results):  # in the order they ran
        runs = [results[(recipe, s)] for s in seeds]
        cells = [f"`{recipe}`", f"{runs[0]['flow_parameters']:,}"]
        cells += [summary([_value(m, key) for m in runs], fmt) for key, _, fmt in SHOWN]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| run | " + " | ".join(label for _, label, _ in SHOWN) + " |", "|---|" + "---:|" * len(SHOWN)]
    for (recipe, seed), metrics in results.items():
        cells = [summary([_value(metrics, key)], fmt) for key, _, fmt in SHOWN]
        lines.append(f"| `{recipe}` seed {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/vq_flow_mnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="recipes to run (default: all four)")
    parser.add_argument("--reuse", action="store_true", help="reuse runs whose evaluation.json exists")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="a recipe override for every run (e.g. data.n_train=1000 for a quick try)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.runs.mkdir(parents=True, exist_ok=True)
    prepare_feature_cache(args.runs)
    recipes = [r for pair in PAIRS for r in pair if not args.only or r in args.only]
    jobs = [(r, s) for s in args.seeds for r in recipes]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(lambda job: run_one(*job, args.runs, args.reuse, tuple(args.overrides)), jobs))
    results = dict(zip(jobs, done, strict=True))
    console = Console(markup=False, emoji=False, highlight=False)
    table = Table("run", *(label for _, label, _ in SHOWN))
    for (recipe, seed), metrics in results.items():
        table.add_row(Text(f"{recipe} seed {seed}"), *(summary([_value(metrics, k)], f) for k, _, f in SHOWN))
    console.print(table)
    if not args.only and not args.overrides:
        out = args.runs / "vq_flow_mnist.md"
        out.write_text(markdown(results, args.seeds, args.jobs))
        console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
