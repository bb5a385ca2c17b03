"""The image-manifold comparison at 16×16×3: DNF, M-flow, PAE, InfoMax VAE and an ambient flow on the procedural
manifold, scored against the true manifold (the renderer).

    python -m mflow_cli.experiments.image_manifolds [--runs runs/image_manifolds] [--only dnf_gan2d_16px ...]

trains each recipe ``recipes/<name>.yaml`` into ``RUNS/<name>`` (on one thread, one at a time; a run folder that
already holds ``model.pt`` is kept, ``--retrain`` starts it over), records the validation loss per epoch on 500
held-out images of another seed beside the training loss in ``metrics.jsonl``, evaluates it with
:func:`mflow_cli.metrics.images.evaluate_images` into ``evaluation.json``, and writes ``RUNS/comparison.md`` (a
Markdown table: FID, reconstruction error, the distance of samples to the true manifold beside the test images'
own floor, latent R², test log-likelihood, training minutes) and ``RUNS/comparison.png`` (samples of each model
beside true images, and the histograms of the samples' distances to the true manifold).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mflow_cli import io
from mflow_cli.app.recipe import Recipe, load_recipe, write_yaml
from mflow_cli.app.runs import METRICS_FILE, MODEL_FILE, RECIPE_FILE, build_dataset, build_model, load_run, save_model
from mflow_cli.datasets.images import ImageManifold
from mflow_cli.datasets.pixels import N_LEVELS
from mflow_cli.metrics.common import sample_in_batches
from mflow_cli.metrics.images import ImageEvaluation, evaluate_images, renderer_of
from mflow_cli.metrics.renderer_distance import project_onto_renderer
from mflow_cli.training import TrainConfig, TrainingMonitor, train

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# The key claim first (DNF vs ambient flow), then the other baselines, then the 8-D manifold.
COMPARISON = (
    "dnf_gan2d_16px", "ambient_flow_gan2d_16px", "pae_gan2d_16px", "mflow_gan2d_16px", "infomax_gan2d_16px",
    "dnf_gan8d_16px", "mflow_gan8d_16px",
)
N_VALIDATION = 500
VALIDATION_SEED_OFFSET = 1000  # validation images: the procedural manifold drawn with seed + this
TIMING_FILE = "training_time.json"
FIGURE_DATA_FILE = "figure_data.pt"
console = Console()


class EpochLog(TrainingMonitor):
    """Appends each epoch record (with the loop's held-out ``val_loss`` on the validation images) to
    metrics.jsonl and logs it."""

    def __init__(self, path: Path) -> None:
        self.path, self.started = path, time.perf_counter()

    def epoch_end(self, record: dict[str, Any]) -> None:
        record = {**record, "time": time.time()}
        io.append_jsonl(record, self.path)
        console.log(f"{record['phase']} epoch {record['epoch']}: loss {record.get('loss', float('nan')):.4g}, "
                    f"validation {record.get('val_loss', float('nan')):.4g} "
                    f"({(time.perf_counter() - self.started) / 60:.1f} min)")


def validation_images(recipe: Recipe) -> tuple[ImageManifold, torch.Tensor]:
    """The recipe's dataset with another seed: its first :data:`N_VALIDATION` training images, never trained on."""
    kwargs = {k: v for k, v in recipe.data.items() if k != "name"}
    kwargs.update(seed=kwargs.get("seed", 1) + VALIDATION_SEED_OFFSET, n_train=N_VALIDATION, n_test=1)
    held_out = ImageManifold(**kwargs)
    return held_out, held_out.train_data()


def train_recipe(recipe: Recipe, run_dir: Path) -> dict[str, float]:
    """Train into ``run_dir`` (recipe.yaml, metrics.jsonl with validation losses, model.pt) on one thread.

    Returns the wall-clock and CPU minutes of the training loop (the machine is shared: the CPU time is what
    the run itself used).
    """
    torch.set_num_threads(1)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, METRICS_FILE, TIMING_FILE):
        (run_dir / name).unlink(missing_ok=True)
    dataset = build_dataset(recipe)
    data = dataset.train_data()
    shape = tuple(data.shape[1:])
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, shape)
    write_yaml(recipe.to_dict(), run_dir / RECIPE_FILE)
    _, validation = validation_images(recipe)
    wall, cpu = time.perf_counter(), time.process_time()
    train(model, data, TrainConfig(**recipe.train), seed=recipe.seed, monitor=EpochLog(run_dir / METRICS_FILE),
          batch_transform=dataset.batch_transform, held_out=validation)
    timing = {"wall_minutes": (time.perf_counter() - wall) / 60, "cpu_minutes": (time.process_time() - cpu) / 60,
              "parameters": sum(p.numel() for p in model.parameters())}
    save_model(model, recipe, shape, run_dir / MODEL_FILE)
    io.write_json(timing, run_dir / TIMING_FILE)
    return timing


def validation_flatness(records: list[dict]) -> float | None:
    """Relative change of the validation loss over the last quarter of the last phase's epochs.

    (loss at the end − loss a quarter of the epochs before) / |loss at the end|; near 0 means flat.
    """
    last = [r for r in records if r.get("phase") == records[-1].get("phase") and "val_loss" in r]
    if len(last) < 4:
        return None
    end, before = last[-1]["val_loss"], last[-1 - len(last) // 4]["val_loss"]
    return (end - before) / max(abs(end), 1e-12)


def distances(images: torch.Tensor, dataset: ImageManifold, options: ImageEvaluation) -> torch.Tensor:
    """Distances (N,) of model-space images to the true manifold, as :func:`evaluate_images` measures them."""
    clipped = dataset.pixels.to_pixels(images).clamp(0, N_LEVELS)  # as evaluate_images: the pixel range
    return project_onto_renderer(clipped, renderer_of(dataset), options.projection_starts, options.projection_steps,
                                 torch.Generator().manual_seed(options.seed)).distance


def model_samples(model: torch.nn.Module, options: ImageEvaluation) -> torch.Tensor:
    """The ``n_samples`` samples :func:`evaluate_images` draws (same seed, same batches)."""
    torch.manual_seed(options.seed)
    return sample_in_batches(model, options.n_samples, options.batch_size)


def figure_data(run_dir: Path, recipe: Recipe, model: torch.nn.Module, options: ImageEvaluation,
                refresh: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight samples in [0, 1] and the distances of all ``n_samples`` to the true manifold, kept in
    ``RUN/figure_data.pt`` (recomputed with ``refresh``, i.e. when the run was just evaluated)."""
    path = run_dir / FIGURE_DATA_FILE
    if path.is_file() and not refresh:
        blob = torch.load(path, weights_only=True)
        return blob["images"], blob["distances"]
    dataset = build_dataset(recipe)
    samples = model_samples(model, options)
    images, found = dataset.pixels.to_images(samples[:8]), distances(samples, dataset, options)
    torch.save({"images": images, "distances": found}, path)
    return images, found


TABLE_COLUMNS = (
    ("FID", "frechet_feature_distance", "{:.3g}"),
    ("recon. L2 (0–255)", "reconstruction_l2_pixels", "{:.1f}"),
    ("sample dist. mean", "sample_distance_to_manifold_mean", "{:.1f}"),
    ("sample dist. median", "sample_distance_to_manifold_median", "{:.1f}"),
    ("test floor mean", "test_distance_to_manifold_mean", "{:.1f}"),
    ("recon. dist. mean", "reconstruction_distance_to_manifold_mean", "{:.1f}"),
    ("latent R² linear", "latent_r2_linear", "{:.3f}"),
    ("latent R² k-NN", "latent_r2_knn", "{:.3f}"),
    ("test log-lik. (nats)", "test_log_likelihood_manifold", "{:.1f}"),
    ("ambient bits/dim", "test_bits_per_dim_ambient", "{:.3f}"),
)


def _cell(value: Any, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def write_table(rows: list[tuple[str, dict | None, dict | None, float | None]], path: Path) -> Table:
    """The Markdown table at ``path`` (one row per run; a run that was not trained says so) and a rich table of
    the same numbers, one column per run (narrow enough for a terminal)."""
    header = ["run", *(c[0] for c in TABLE_COLUMNS), "train min (wall / CPU)", "val. loss Δ last ¼"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    columns = []
    for name, metrics, timing, flat in rows:
        if metrics is None:
            cells = [name, *["not run"] * (len(header) - 1)]
        else:
            minutes = "—" if timing is None else f"{timing['wall_minutes']:.1f} / {timing['cpu_minutes']:.1f}"
            cells = [name, *(_cell(metrics.get(key), fmt) for _, key, fmt in TABLE_COLUMNS), minutes,
                     _cell(flat, "{:+.2%}")]
        lines.append("| " + " | ".join(cells) + " |")
        columns.append(cells)
    notes = [
        "",
        "Distances are Euclidean norms over the 768 values in 8-bit pixel levels (0–255); samples and reconstructions",
        "are clipped to the pixel range first. The test floor is the distance of the quantized test images to the",
        "renderer (quantization alone gives about √(768/12) ≈ 8). The ambient flow's test log-likelihood is its",
        "density in R^768 (no manifold), not comparable with the others' on-manifold densities; it has no manifold",
        "coordinates, so no latent R². Training minutes: wall clock on a shared machine / the process's CPU time",
        "(one thread). Val. loss Δ: relative change of the held-out loss over the last quarter of the last phase.",
    ]
    path.write_text("\n".join(lines + notes) + "\n")
    table = Table("metric", *(c[0].removesuffix("_16px") for c in columns),
                  title="image manifolds, 16×16×3 (distances: L2 in 0–255 pixel levels)")
    for i, label in enumerate(header[1:], start=1):
        table.add_row(label, *(c[i] for c in columns))
    return table


def draw_figure(results: list[tuple[str, torch.Tensor, torch.Tensor]], truth: torch.Tensor,
                test_d: torch.Tensor, path: Path) -> Path:
    """One row per model: 8 samples, then the histogram of its samples' distances beside the test floor."""
    from mflow_cli.plots.common import pyplot, save

    plt = pyplot()
    rows = [("true images", truth, test_d), *results]
    fig, axes = plt.subplots(len(rows), 9, figsize=(13, 1.6 * len(rows)),
                             gridspec_kw={"width_ratios": [1] * 8 + [3]})
    low = min(float(d[torch.isfinite(d)].min()) for _, _, d in rows) * 0.8
    top = max(float(d[torch.isfinite(d)].max()) for _, _, d in rows) * 1.2
    bins = torch.logspace(math.log10(max(low, 1e-3)), math.log10(top), 50).tolist()  # floor and far samples alike
    for row, (name, images, distances) in zip(axes, rows, strict=True):
        for ax, image in zip(row[:8], images[:8], strict=False):
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        for ax in row[:8]:
            ax.set_axis_off()
        row[0].set_title(name, loc="left", fontsize=9)
        row[8].hist(test_d.clamp(max=top).numpy(), bins=bins, alpha=0.5, label="test floor", color="grey")
        if distances is not test_d:
            row[8].hist(distances.clamp(max=top).numpy(), bins=bins, alpha=0.6, label="samples")
        row[8].set_xscale("log")
        row[8].legend(fontsize=7)
        row[8].tick_params(labelsize=7)
    axes[-1][8].set_xlabel("distance to the true manifold (L2, 0–255 levels)", fontsize=8)
    return save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/image_manifolds", help="folder of the run folders and outputs")
    parser.add_argument("--only", nargs="+", choices=COMPARISON, help="train/evaluate only these recipes")
    parser.add_argument("--retrain", action="store_true", help="train again runs that hold a model.pt")
    parser.add_argument("--train-only", action="store_true", help="train, do not evaluate or write the table")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a recipe key in every recipe (e.g. train.epochs=1 for a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = Path(args.runs)
    chosen = args.only or COMPARISON
    for name in chosen:
        run_dir = runs / name
        if (run_dir / MODEL_FILE).is_file() and not args.retrain:
            console.log(f"{name}: trained already ({run_dir / MODEL_FILE})")
            continue
        console.rule(f"training {name}")
        timing = train_recipe(load_recipe(RECIPES / f"{name}.yaml", args.set or []), run_dir)
        console.log(f"{name}: trained in {timing['wall_minutes']:.1f} min wall, {timing['cpu_minutes']:.1f} min CPU")
    if args.train_only:
        return
    rows, figure_rows, truth, floor = [], [], None, None
    for name in COMPARISON:
        run_dir = runs / name
        if not (run_dir / MODEL_FILE).is_file():
            rows.append((name, None, None, None))
            continue
        recipe, model = load_run(run_dir, device="cpu")
        options = ImageEvaluation(**recipe.evaluate)
        if name in chosen or not (run_dir / "evaluation.json").is_file():
            console.rule(f"evaluating {name}")
            start = time.perf_counter()
            metrics = evaluate_images(model, build_dataset(recipe), options)
            io.write_json(metrics, run_dir / "evaluation.json")
            console.log(f"{name}: evaluated in {(time.perf_counter() - start) / 60:.1f} min")
        metrics = json.loads((run_dir / "evaluation.json").read_text())
        timing_path = run_dir / TIMING_FILE
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
        rows.append((name, metrics, timing, validation_flatness(io.read_jsonl(run_dir / METRICS_FILE))))
        if recipe.data["n_params"] == 2 and options.n_samples > 0 and options.projection_starts > 0:
            figure_rows.append((name, *figure_data(run_dir, recipe, model, options, refresh=name in chosen)))
            if truth is None:
                dataset = build_dataset(recipe)
                test = dataset.test_data()[: options.n_test]
                truth, floor = dataset.pixels.to_images(test[:8]), distances(test, dataset, options)
    runs.mkdir(parents=True, exist_ok=True)
    console.print(write_table(rows, runs / "comparison.md"))
    console.log(f"wrote {runs / 'comparison.md'}")
    if figure_rows:
        console.log(f"wrote {draw_figure(figure_rows, truth, floor, runs / 'comparison.png')}")


if __name__ == "__main__":
    main()
