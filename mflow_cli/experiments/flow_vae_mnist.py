"""Flow-VAE posteriors on statically binarized MNIST at the reference protocol: train (or resume), evaluate, tabulate.

    python -m mflow_cli.experiments.flow_vae_mnist --jobs 2             # every recipes/flowvae_mnist40_*.yaml
    python -m mflow_cli.experiments.flow_vae_mnist recipes/flowvae_mnist40_none.yaml recipes/flowvae_mnist40_iaf.yaml \
        --set train.epochs=100 --set evaluate.max_examples=1000
    python -m mflow_cli.experiments.flow_vae_mnist --cost                # what each row costs, before training it
    python -m mflow_cli.experiments.flow_vae_mnist --paired              # the gains with their paired s.e.

For each recipe it trains the model into ``--runs/<recipe name>`` with :func:`mflow_cli.app.runs.train_run` (a
finished run with the same recipe is reused; an unfinished one, or one with a smaller epoch budget, is resumed;
``--jobs N``: N recipes at a time, each trained and scored in its own process, their output in ``--out/logs``),
then scores it with the recipe's ``evaluate`` section (``--set evaluate.*`` changes only the scoring, never
the training recipe) and writes ``--out/table.md`` and ``--out/results.json``: per posterior −log p(x) with
k = 200 and 5,000 importance samples ± the standard error over test images, −ELBO, the KL term, the gain over
the plain VAE, the epochs to the best validation ELBO (when the training records a ``val_loss``; else
"fixed budget"), the training and evaluation minutes and the parameter count. Evaluations are cached in
``--out/evaluations`` and reused while the model file and the options are unchanged.

``--cost`` trains and evaluates nothing: it times, for each recipe's untrained model on random binary images
(no MNIST needed), one training step (loss, backward, the training loop's fused AdamW) at the recipe's batch size
and the k = 200 importance-weighted bound on 100 images, and writes ``--out/cost.md``: milliseconds per step,
seconds per epoch of the 50,000 training images, hours for the recipe's epochs, and seconds per 1,000 test
images at k = 200 (k = 5,000 on all 10,000 costs 250 times that).

``--paired`` trains nothing either: for each recipe whose run is trained it scores every test image with the
k = 200 bound (a draw stream of its own, ``--paired-seed``; cached in ``--out/paired`` while the model file holds)
and writes ``--out/paired.md``: each posterior's gain over the plain VAE as the mean of the per-image differences,
± their standard error (the paired s.e., which leaves out how much harder one test image is than another: the
table's ± are each model's own spread), and the share of test images the flow scores higher; ``--out/paired.png``
draws those gains against each model's parameter count (one line per flow family, so posteriors of equal size
stand one above another). ``--paired-baseline NAME`` takes the gains against that recipe's run instead (written
to ``paired_NAME.md`` and ``paired_NAME.png``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mflow_cli import io
from mflow_cli.app import catalog, runs
from mflow_cli.app.recipe import Recipe, load_recipe
from mflow_cli.bench import training_step
from mflow_cli.errors import ConfigError
from mflow_cli.experiments.common import CommandFailed, run_module
from mflow_cli.metrics.flow_vae import batched_bounds, standard_error
from mflow_cli.plots.flow_vae import paired_gains_figure

console = Console()

RECIPE_ORDER = ["none", "planar10", "planar20", "planar40", "planar80", "radial", "householder", "nice", "iaf",
                "sylvester_orthogonal", "sylvester_householder", "sylvester_triangular"]
DEFAULT_RECIPES = [Path("recipes") / f"flowvae_mnist40_{name}.yaml" for name in RECIPE_ORDER]
VALIDATION_KEY = "val_loss"  # the training loop's held-out loss (the validation split when there is one)
"""The per-epoch record key of the held-out loss (−ELBO on the validation split) that picks the best epoch."""
TRAINING_IMAGES = 50_000
"""MNIST's 60,000 training images less the recipes' 10,000 held out for validation (``data.n_validation``)."""
REFERENCE_NATS = 89.9
"""The plain VAE's −log p(x) of Rezende & Mohamed (2015, Table 2), reproduced at 89.78 by the pythae benchmark."""


@dataclass
class Row:
    """One trained and scored posterior."""

    recipe: str
    posterior: str
    parameters: int
    epochs: int
    best_epoch: int | None
    train_minutes: float | None
    metrics: dict[str, Any]


def training_minutes(records: list[dict]) -> float | None:
    """Training wall time from the epoch records' end times: the sum of the gaps between consecutive epochs
    (gaps above 10× the median, a stop and resume, count as one median epoch), plus one median epoch for the
    first."""
    times = [r["time"] for r in records if "time" in r]
    if len(times) < 2:
        return None
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    median = statistics.median(gaps)
    return (sum(g if g <= 10 * median else median for g in gaps) + median) / 60


def best_validation_epoch(records: list[dict]) -> int | None:
    """The epoch with the lowest ``validation_loss`` (the best validation ELBO), or None without one."""
    scored = [r for r in records if isinstance(r.get(VALIDATION_KEY), (int, float))]
    if not scored:
        return None
    return int(min(scored, key=lambda r: r[VALIDATION_KEY])["epoch"])


def _same_recipe(a: Recipe, b: Recipe, ignore_epochs: bool = False) -> bool:
    """Whether two recipes train the same model; ``threads`` (how many cores score it) does not count."""
    da, db = a.to_dict(), b.to_dict()
    da.pop("threads", None)
    db.pop("threads", None)
    if ignore_epochs:
        da["train"].pop("epochs", None)
        db["train"].pop("epochs", None)
    return da == db


def train_or_resume(recipe: Recipe, run_dir: Path, force: bool) -> float:
    """Train ``recipe`` into ``run_dir`` unless a finished run of the same recipe is there; return the seconds
    spent training in this call (0 when reused)."""
    if (run_dir / runs.MODEL_FILE).is_file() and not force:
        saved, _ = runs.load_run(run_dir, "cpu")
        if _same_recipe(saved, recipe):
            console.print(f"[dim]{recipe.name}: reusing the trained run in {run_dir}[/]")
            return 0.0
        if not _same_recipe(saved, recipe, ignore_epochs=True):
            raise ConfigError(f"{run_dir} holds a run of another recipe; pass --force to retrain it or choose --runs")
    resume = (run_dir / runs.CHECKPOINT_FILE).is_file() and not force
    console.print(f"[bold]{recipe.name}[/]: {'resuming' if resume else 'training'} in {run_dir}")
    start = time.perf_counter()
    runs.train_run(recipe, run_dir, resume=resume, force=force)
    return time.perf_counter() - start


def evaluate_cached(recipe: Recipe, run_dir: Path, cache: Path) -> dict[str, Any]:
    """The evaluator's metrics with ``recipe.evaluate``, reused from ``cache`` while the model and options hold."""
    stamp = (run_dir / runs.MODEL_FILE).stat().st_mtime_ns
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("options") == recipe.evaluate and saved.get("model_mtime_ns") == stamp:
            return saved["metrics"]
    _, model = runs.load_run(run_dir)
    dataset = runs.build_dataset(recipe)
    scoring = runs.evaluation(recipe)
    console.print(f"  evaluating {recipe.name} ({recipe.evaluate})")
    with runs.scoring_settings():
        metrics = scoring.evaluate(model, dataset, scoring.options(**recipe.evaluate))
    io.write_json({"options": recipe.evaluate, "model_mtime_ns": stamp, "metrics": metrics}, cache)
    return metrics


def _is_plain_vae(posterior: str) -> bool:
    """Whether a posterior label (``FlowVAE.posterior_flow_label``) is the plain VAE's, the gains' baseline."""
    return posterior.startswith("none")


def _signed(value: float) -> str:
    """``value`` to two decimals with its sign, the minus as the README's "−" (U+2212)."""
    return f"{value:+.2f}".replace("-", "−")


def _nats(metrics: dict, key: str) -> str:
    value, se = metrics.get(key), metrics.get(f"{key}_se")
    if value is None:
        return "–"
    return f"{-value:.2f} ± {se:.2f}" if se is not None else f"{-value:.2f}"


def table_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells: −log p(x) at both k (± s.e.), −ELBO, KL, gain over the plain VAE, ..."""
    plain = next((r for r in rows if _is_plain_vae(r.posterior)), None)
    k1 = next((r.metrics.get("iw_samples") for r in rows), 200)
    k2 = next((r.metrics.get("tight_iw_samples") for r in rows if r.metrics.get("tight_iw_samples")), 5000)
    header = ["posterior", f"−log p(x), k = {k1}", f"−log p(x), k = {k2}", "−ELBO", "KL",
              f"gain over VAE (k = {k1})", "epochs to best val. ELBO", "train min", "eval min", "parameters"]
    cells = []
    for r in rows:
        m = r.metrics
        gain = "–"
        if plain is not None and r is not plain and None not in (m.get("test_iw_log_likelihood"),
                                                                   plain.metrics.get("test_iw_log_likelihood")):
            gain = _signed(m["test_iw_log_likelihood"] - plain.metrics["test_iw_log_likelihood"])
        best = f"{r.best_epoch} of {r.epochs}" if r.best_epoch is not None else f"fixed budget ({r.epochs})"
        train_min = f"{r.train_minutes:.1f}" if r.train_minutes is not None else "–"
        eval_min = f"{m['evaluation_seconds'] / 60:.1f}" if m.get("evaluation_seconds") is not None else "–"
        cells.append([r.posterior, _nats(m, "test_iw_log_likelihood"), _nats(m, "test_tight_iw_log_likelihood"),
                      _nats(m, "test_elbo"), f"{m['test_kl']:.2f}" if m.get("test_kl") is not None else "–", gain,
                      best, train_min, eval_min, f"{r.parameters / 1e6:.2f} M"])
    return header, cells


def markdown_table(rows: list[Row]) -> str:
    """The results as a Markdown table (nats; ± the standard error over test images), with a note line."""
    header, cells = table_rows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    n_test = next((r.metrics.get("n_test") for r in rows), None)
    lines.append("")
    lines.append(f"Statically binarized MNIST, {n_test} test images; nats, ± the standard error over test images; "
                 f"the plain-VAE reference is {REFERENCE_NATS} nats (Rezende & Mohamed 2015). Gain: the IW bound's "
                 "improvement over the plain VAE in nats (positive is better).")
    return "\n".join(lines) + "\n"


def _rich_table(rows: list[Row]) -> Table:
    header, cells = table_rows(rows)
    table = Table(*header, title="flow-VAE posteriors on statically binarized MNIST (nats)")
    for c in cells:
        table.add_row(*c)
    return table


def run_in_processes(paths: list[Path], overrides: list[str], runs_dir: Path, out: Path, force: bool, jobs: int,
                     threads: int) -> None:
    """Train and score each recipe in its own process, ``jobs`` at a time (output in ``out/logs/NAME.log``), so
    that :func:`run_experiment` then finds every run trained and every evaluation cached."""
    def one(path: Path) -> None:
        sets = [f"--set={o}" for o in overrides]
        args = [str(path), "--runs", str(runs_dir), "--out", str(out), "--threads", str(threads), "--no-table", *sets]
        console.print(f"[bold]{path.stem}[/]: started in its own process")
        run_module("mflow_cli.experiments.flow_vae_mnist", *args, *(["--force"] if force else []), threads=threads,
                   log=out / "logs" / f"{path.stem}.log")
        console.print(f"{path.stem}: done")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, paths))


def run_experiment(paths: list[Path], overrides: list[str], runs_dir: Path, out: Path, force: bool,
                   write_table: bool = True) -> list[Row]:
    """Train or resume every recipe, evaluate it, write ``out/table.md`` and ``out/results.json`` (unless not
    ``write_table``)."""
    training_overrides = [o for o in overrides if not o.startswith("evaluate.")]
    rows = []
    for path in paths:
        recipe = load_recipe(path, training_overrides)
        run_dir = runs_dir / recipe.name
        seconds = train_or_resume(recipe, run_dir, force)
        scored = load_recipe(path, overrides)
        metrics = evaluate_cached(scored, run_dir, out / "evaluations" / f"{recipe.name}.json")
        _, model = runs.load_run(run_dir, "cpu")
        records = io.read_jsonl(run_dir / runs.METRICS_FILE)
        minutes = training_minutes(records)
        if minutes is None and seconds > 0:
            minutes = seconds / 60
        rows.append(Row(recipe.name, model.posterior_flow_label, sum(p.numel() for p in model.parameters()),
                        max((int(r["epoch"]) for r in records), default=0), best_validation_epoch(records), minutes,
                        metrics))
        bound = metrics.get("test_iw_log_likelihood")
        if bound is not None:
            console.print(f"  {recipe.name}: −log p(x) ≤ {-bound:.2f} nats (k = {metrics['iw_samples']})")
    if not write_table:
        return rows
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown_table(rows))
    io.write_json({r.recipe: {**r.__dict__} for r in rows}, out / "results.json")
    console.print(_rich_table(rows))
    console.print(f"wrote {out / 'table.md'} and {out / 'results.json'}")
    return rows


@dataclass
class Cost:
    """What one recipe's row costs on this machine (untrained weights, random binary images)."""

    recipe: str
    parameters: int
    step_ms: float
    epoch_seconds: float
    budget_hours: float
    iw_seconds_per_1000: float


def _best_seconds(fn, calls: int, rounds: int) -> float:
    """The best of ``rounds`` mean times of ``calls`` calls of ``fn`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def cost_rows(paths: list[Path], overrides: list[str], steps: int = 10, rounds: int = 3) -> list[Cost]:
    """Time each recipe's training step and its k = 200 bound, as :class:`Cost` rows (see the module doc)."""
    rows = []
    for path in paths:
        recipe = load_recipe(path, overrides)
        torch.manual_seed(recipe.seed)
        model = runs.build_model(recipe, catalog.dataset_class(recipe.data["name"]).shape)
        batch = int(recipe.train.get("batch_size", 100))
        x = (torch.rand(batch, *model.data_shape) < 0.5).float()
        step = training_step(model, x, reference=False, lr=1e-3, weight_decay=0.0, fused=True)
        step_seconds = _best_seconds(step, steps, rounds)
        images = x[:100] if batch >= 100 else (torch.rand(100, *model.data_shape) < 0.5).float()

        def bound(images=images, model=model) -> None:
            with torch.no_grad():
                model.log_weights(images, 200)

        iw_seconds = _best_seconds(bound, 1, rounds)
        epoch_seconds = step_seconds * -(-TRAINING_IMAGES // batch)
        rows.append(Cost(recipe.name, sum(p.numel() for p in model.parameters()), 1e3 * step_seconds,
                         epoch_seconds, epoch_seconds * int(recipe.train.get("epochs", 1)) / 3600,
                         10 * iw_seconds))
        console.print(f"  {recipe.name}: {1e3 * step_seconds:.1f} ms per training step")
    return rows


PAIRED_SAMPLES = 200
"""k of the paired comparison (``--paired``): the k of the table's first bound."""


def per_image_bounds(recipe: Recipe, model: torch.nn.Module, run_dir: Path, cache: Path, seed: int) -> torch.Tensor:
    """The k = :data:`PAIRED_SAMPLES` bound of every test image (N,) under ``model`` (the run's), with the draws
    seeded by ``seed``; reused from ``cache`` while the run's model file and the seed hold."""
    key = {"model_mtime_ns": (run_dir / runs.MODEL_FILE).stat().st_mtime_ns, "k": PAIRED_SAMPLES, "seed": seed}
    if cache.is_file():
        saved = io.load_torch(cache)
        if saved.get("key") == key:
            return saved["bounds"]
    options = runs.evaluation(recipe).options(**recipe.evaluate)
    console.print(f"  scoring every test image of {recipe.name} (k = {PAIRED_SAMPLES})")
    torch.manual_seed(seed)
    with runs.scoring_settings():
        _, bounds = batched_bounds(model, runs.build_dataset(recipe).test_data(), PAIRED_SAMPLES, options.batch_size)
    bounds = bounds.double()
    io.save_torch({"key": key, "bounds": bounds}, cache)
    return bounds


@dataclass
class PairedGain:
    """One run's row of the paired comparison (``--paired``): its mean k = :data:`PAIRED_SAMPLES` bound and,
    except for the baseline itself, the mean per-image difference from the baseline's bounds."""

    recipe: str
    posterior: str
    parameters: int
    nats: float  # −log p(x), the mean over the test images
    gain: float | None = None  # mean per-image bound − the baseline's (nats; positive is better)
    se: float | None = None  # std / √n of those differences
    share_higher: float | None = None  # share of the images the run scores higher than the baseline


def paired_gains(bounds: dict[str, tuple[str, int, torch.Tensor]], baseline: str | None = None
                 ) -> tuple[str, list[PairedGain]]:
    """The baseline's posterior label and a :class:`PairedGain` per run, from per-image bounds
    {recipe: (posterior, parameters, bounds)}. ``baseline``: a recipe name (default: the plain VAE)."""
    if baseline is None:
        baseline = next((name for name, (posterior, _, _) in bounds.items() if _is_plain_vae(posterior)), None)
    if baseline not in bounds:
        raise ConfigError(f"--paired needs the baseline's trained run ({baseline or 'flowvae_mnist40_none'}) among the "
                          "recipes")
    reference = bounds[baseline][2]
    gains = []
    for name, (posterior, parameters, b) in bounds.items():
        row = PairedGain(name, posterior, parameters, -float(b.mean()))
        if name != baseline:
            diff = b - reference
            row.gain, row.se = float(diff.mean()), standard_error(diff)
            row.share_higher = float((diff > 0).double().mean())
        gains.append(row)
    return bounds[baseline][0], gains


def paired_markdown(reference_label: str, gains: list[PairedGain], n_images: int, seed: int) -> str:
    """The gains of :func:`paired_gains` over the run labelled ``reference_label`` as a Markdown table: the mean
    per-image difference ± its standard error, and the share of images scored higher."""
    short = "VAE" if _is_plain_vae(reference_label) else reference_label
    header = ["posterior", f"−log p(x), k = {PAIRED_SAMPLES}", f"gain over {short} (paired)", "paired s.e.",
              "images scored higher", "parameters"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in gains:
        cells = [row.posterior, f"{row.nats:.2f}", "—", "—", "—"]
        if row.gain is not None:
            cells[2:] = [_signed(row.gain), f"{row.se:.2f}", f"{100 * row.share_higher:.1f}%"]
        lines.append("| " + " | ".join([*cells, f"{row.parameters / 1e6:.2f} M"]) + " |")
    lines += ["", f"{n_images:,} test images, every model's draws seeded with {seed}; nats. The paired s.e. is "
              f"std / √n of the per-image differences from {reference_label}."]
    return "\n".join(lines) + "\n"


def run_paired(paths: list[Path], overrides: list[str], runs_dir: Path, out: Path, seed: int,
               baseline: str | None = None) -> str:
    """Score every trained run's test images (:func:`per_image_bounds`) and write ``out/paired.md`` (gains over
    ``baseline``, a recipe name; default the plain VAE)."""
    bounds = {}
    for path in paths:
        recipe = load_recipe(path, overrides)
        run_dir = runs_dir / recipe.name
        if not (run_dir / runs.MODEL_FILE).is_file():
            console.print(f"[dim]{recipe.name}: not trained yet, left out[/]")
            continue
        _, model = runs.load_run(run_dir)  # the recipe's device, as the evaluation uses
        values = per_image_bounds(recipe, model, run_dir, out / "paired" / f"{recipe.name}.pt", seed)
        bounds[recipe.name] = (model.posterior_flow_label, sum(p.numel() for p in model.parameters()), values)
    reference_label, gains = paired_gains(bounds, baseline)
    markdown = paired_markdown(reference_label, gains, len(next(iter(bounds.values()))[2]), seed)
    out.mkdir(parents=True, exist_ok=True)
    stem = "paired" if baseline is None else f"paired_{baseline}"
    (out / f"{stem}.md").write_text(markdown)
    paired_gains_figure([(g.posterior, g.parameters, g.gain or 0.0, g.se or 0.0) for g in gains],
                        "the plain VAE" if _is_plain_vae(reference_label) else reference_label, PAIRED_SAMPLES,
                        out / f"{stem}.png")
    return markdown


def cost_markdown(rows: list[Cost], threads: int) -> str:
    header = ["recipe", "parameters", "ms / training step", "s / epoch", "hours for its epochs",
              "s / 1,000 test images at k = 200"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [f"| `{r.recipe}` | {r.parameters / 1e6:.2f} M | {r.step_ms:.1f} | {r.epoch_seconds:.1f} | "
              f"{r.budget_hours:.2f} | {r.iw_seconds_per_1000:.1f} |" for r in rows]
    lines += ["", f"Untrained weights, random binary 28×28 images, {threads} thread(s); best of 3 rounds; an epoch is "
              f"{TRAINING_IMAGES:,} images."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", type=Path, help="recipes (default: every flowvae_mnist40_* recipe)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="override a recipe key, section.key=value (evaluate.* only changes the scoring)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where the run folders live")
    parser.add_argument("--out", type=Path, default=Path("runs/flow_vae_mnist"), help="where the table goes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (the recipe's threads key)")
    parser.add_argument("--force", action="store_true", help="retrain runs that exist")
    parser.add_argument("--jobs", type=int, default=1, help="recipes trained at a time, each in its own process")
    parser.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker
    parser.add_argument("--cost", action="store_true",
                        help="only time each recipe's training step and k = 200 bound (untrained; writes cost.md)")
    parser.add_argument("--paired", action="store_true",
                        help="only score every test image of the trained runs and write the gains with their paired "
                             "standard errors (paired.md)")
    parser.add_argument("--paired-seed", type=int, default=1, help="seed of the paired comparison's draws")
    parser.add_argument("--paired-baseline", default=None,
                        help="the recipe name the paired gains are taken against (default: the plain VAE; writes "
                             "paired_NAME.md)")
    args = parser.parse_args(argv)
    paths = args.recipes or [p for p in DEFAULT_RECIPES if p.is_file()]
    if not paths:
        raise SystemExit("no recipes given and none of recipes/flowvae_mnist40_*.yaml found here")
    torch.set_num_threads(args.threads)
    overrides = [f"threads={args.threads}", *args.overrides]
    try:
        if args.cost:
            markdown = cost_markdown(cost_rows(paths, overrides), args.threads)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "cost.md").write_text(markdown)
            console.print(markdown, markup=False, highlight=False)
            return
        if args.paired:
            console.print(run_paired(paths, overrides, args.runs, args.out, args.paired_seed,
                                     args.paired_baseline), markup=False, highlight=False)
            return
        if args.jobs > 1 and len(paths) > 1:
            for path in paths:  # every recipe valid before any process starts
                load_recipe(path, overrides)
            run_in_processes(paths, args.overrides, args.runs, args.out, args.force, args.jobs, args.threads)
            args.force = False  # the workers retrained; the table below reuses their runs
        run_experiment(paths, overrides, args.runs, args.out, args.force, write_table=not args.no_table)
    except CommandFailed as err:
        console.print(f"error: {err}", markup=False, highlight=False)
        raise SystemExit(1) from None
    except ConfigError as err:
        console.print(f"[red]error:[/] {err}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
