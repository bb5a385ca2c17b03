"""The ``mflow`` command: parses arguments, prints with rich, and calls :mod:`mflow_cli.app.runs`.

Every user-supplied string (paths, names, keys, values) is printed literally: the consoles read no markup and no
emoji codes. Bad input (recipe, file, option) ends with one ``error: ...`` line on stderr and exit code 2; a failed
write with one line and exit code 1; Ctrl-C, SIGTERM and SIGHUP with one line saying what was kept and exit code
130. ``MFLOW_DEBUG=1`` shows the traceback of an internal error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from ..errors import ConfigError, OutputError
from ..version import __version__

if TYPE_CHECKING:
    from .progress import Reporter


class _Command(TyperCommand):
    """Usage lines name required arguments plainly (``RECIPE``, not typer 0.29's ``{recipe}``)."""

    def collect_usage_pieces(self, ctx):
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Normalizing flows on data manifolds: train, sample, encode, evaluate, plot, describe, dimension, bench.",
)
console = Console(markup=False, emoji=False, highlight=False, soft_wrap=True)  # lines are never wrapped
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True)
_signalled: list[str] = []


def command(**kwargs):
    """``@app.command`` with the plain usage line."""
    return app.command(cls=_Command, **kwargs)


def _version(value: bool) -> None:
    if value:
        from ..kernels import backend_info

        console.print(f"mflow {__version__} ({backend_info()})")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show version and kernel path."
    ),
) -> None:
    """mflow: normalizing flows on data manifolds."""


@contextlib.contextmanager
def _reporting():
    """A progress reporter for the console (bar or lines), finished whatever happens."""
    from .progress import reporter_for

    reporter = _StopsOnSignal(reporter_for(console))
    try:
        yield reporter
    finally:
        reporter.finish()


RUN_DIR = typer.Argument(..., metavar="RUN_DIR", help="Run folder written by mflow train.")


@command()
def train(
    recipe: str = typer.Argument(..., metavar="RECIPE", help="Recipe YAML file, or a shipped recipe's name."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a recipe key: section.key=value (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="RUN_DIR",
                                       help="Run folder (default: runs/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start over in a folder that already holds a run."),
) -> None:
    """Train a model; writes model.pt, checkpoint.pt, metrics.jsonl and recipe.yaml into the run folder.

    Ctrl-C or SIGTERM saves a checkpoint at the next step and exits (130); --resume continues. Under
    torchrun (e.g. torchrun --nproc_per_node 4 -m mflow_cli train R.yaml) it trains with
    DistributedDataParallel; only rank 0 prints and writes. A run folder has one writer at a time.

    \b
    Examples:
      mflow train dnf_spiral                                   # a shipped recipe (mflow recipes lists them)
      mflow train recipes/dnf_spiral.yaml --set train.epochs=5 --out runs/quick
      mflow train dnf_own_data --set data.path=my.h5 --set model.latent_dim=2
      mflow train dnf_spiral --resume                          # after a crash or Ctrl-C
    """
    from ..distributed import rank
    from .progress import TrainingProgress
    from .recipe import load_recipe
    from .recipes import resolve_recipe
    from .runs import train_run

    console.quiet = rank() > 0
    spec = load_recipe(resolve_recipe(recipe), set_)
    out_dir = out or Path("runs") / spec.name
    console.print(Text(f"mflow train {spec.name}: {spec.model['kind']} on {spec.data['name']} -> {out_dir}"))
    with _reporting() as reporter:
        train_run(spec, out_dir, resume=resume, force=force, monitor=TrainingProgress(reporter))
    console.print(Text(f"saved {out_dir / 'model.pt'}"))


@command()
def sample(
    run_dir: Path = RUN_DIR,
    n: int = typer.Option(..., "-n", metavar="N", help="Number of samples."),
    out: Path = typer.Option(..., "-o", "--out", metavar="FILE.h5", help="Output HDF5 file (dataset 'samples')."),
    batch_size: int = typer.Option(10000, "--batch-size", metavar="N", help="Samples drawn per batch."),
    seed: int = typer.Option(0, "--seed", metavar="SEED", help="Random seed."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Draw samples from a trained model into an HDF5 file (in the data's own units).

    \b
    Example:
      mflow sample runs/dnf_spiral -n 10000 -o samples.h5
    """
    from .runs import sample_to_h5

    with _reporting() as reporter:
        sample_to_h5(run_dir, n, out, batch_size=batch_size, seed=seed, force=force, progress=reporter)
    console.print(Text(f"wrote {n} samples to {out}"))


@command()
def encode(
    run_dir: Path = RUN_DIR,
    inp: Path = typer.Argument(..., metavar="INPUT.h5", help="HDF5 file with an (N, D) float dataset."),
    out: Path = typer.Option(..., "-o", "--out", metavar="FILE.h5",
                             help="Output HDF5 file (datasets 'latents', 'log_prob', ...)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar="NAME",
                                          help="Dataset name in INPUT.h5 (default: its only one)."),
    batch_size: int = typer.Option(1000, "--batch-size", metavar="N", help="Rows encoded per batch."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    external_links: bool = typer.Option(False, "--external-links",
                                        help="Follow a dataset that is an HDF5 external link to another file."),
) -> None:
    """Encode data into latents (and log densities where the model has them).

    \b
    Example:
      mflow encode runs/dnf_spiral samples.h5 -o latents.h5
    """
    from .runs import encode_h5

    with _reporting() as reporter:
        encode_h5(run_dir, inp, out, dataset=dataset, batch_size=batch_size, force=force, progress=reporter,
                  external_links=external_links)
    console.print(Text(f"wrote {out}"))


@command()
def evaluate(
    run_dir: Path = RUN_DIR,
    out: Optional[Path] = typer.Option(None, "-o", "--out", metavar="FILE.json",
                                       help="Metrics JSON (default: RUN_DIR/evaluation.json)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
) -> None:
    """Compute test metrics (log-likelihood, reconstruction, KL to a known density, ...).

    \b
    Example:
      mflow evaluate runs/dnf_spiral              # table + runs/dnf_spiral/evaluation.json
    """
    from .runs import evaluate_run

    with console.status("evaluating"):
        metrics = evaluate_run(run_dir, out, force=force)
    _print_metrics(metrics, Text(f"evaluation of {run_dir}"))
    console.print(Text(f"wrote {out or Path(run_dir) / 'evaluation.json'}"))


def _print_metrics(metrics: dict, title: Text) -> None:
    """Two tables: the quality metrics (meaning, unit, which way is better) and the machine-dependent timings."""
    from ..metrics.glossary import metadata_block, split_timings

    about = metadata_block(metrics)
    quality, timings = split_timings(metrics)
    for rows, heading in ((quality, title), (timings, Text("timings (this machine, not a quality measure)"))):
        if not rows:
            continue
        table = Table(title=heading)
        table.add_column("metric", no_wrap=True, min_width=max(map(len, rows)))  # keys are never cut
        table.add_column("value", justify="right", no_wrap=True)
        for col in ("unit", "better", "what it is"):
            table.add_column(col)
        for key, value in rows.items():
            shown = f"{value:.6g}" if isinstance(value, float) else ("n/a" if value is None else str(value))
            table.add_row(Text(key), Text(shown), Text(about[key]["unit"]), Text(about[key]["better"]),
                          Text(about[key]["name"]))
        console.print(table)


@command()
def plot(
    run_dir: Path = RUN_DIR,
    samples: Optional[Path] = typer.Option(None, "--samples", metavar="FILE.h5",
                                           help="Draw these samples (e.g. from mflow sample) instead of fresh ones."),
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar="NAME",
                                          help="Dataset name in FILE.h5 (default: its only one)."),
) -> None:
    """Draw PNG figures (training curves, samples over data, densities) into RUN_DIR/plots.

    \b
    Examples:
      mflow plot runs/dnf_spiral
      mflow plot runs/dnf_spiral --samples runs/dnf_spiral/samples.h5
    """
    from .runs import plot_run

    with console.status("plotting"):
        paths = plot_run(run_dir, samples, dataset)
    for path in paths:
        console.print(Text(f"wrote {path}"))


@command()
def recipes() -> None:
    """List the shipped recipes, one line each with what it reproduces (use one by name: mflow train NAME)."""
    from .recipes import shipped_recipes, summary

    table = Table(title="shipped recipes (mflow train NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("what it reproduces")
    for name, path in shipped_recipes().items():
        table.add_row(Text(name), Text(summary(path)))
    console.print(table)


@command()
def describe(
    kind: Optional[str] = typer.Argument(None, help="A model kind (model.kind), e.g. dnf."),
    data: Optional[str] = typer.Option(None, "--data", help="Describe a dataset (data.name), e.g. thin_spiral."),
) -> None:
    """List the recipe keys of a model kind or dataset: type, default and what each does.

    Without arguments, list every model kind and dataset. Examples: mflow describe dnf; mflow describe --data toy3d.
    """
    from .catalog import DATASETS, MODELS
    from .describe import describe_data, describe_kind

    if kind is None and data is None:
        table = Table(title="model kinds (model.kind) and datasets (data.name)")
        for col in ("section", "name", "what it is"):
            table.add_column(col)
        for name, entry in MODELS.items():
            table.add_row("model.kind", name, entry.summary)
        for name, cls in DATASETS.items():
            table.add_row("data.name", name, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "")
        console.print(table)
        return
    description = describe_data(data) if data is not None else describe_kind(kind)
    console.print(Text(description.title, style="bold"))
    for line in description.references:
        console.print(Text(f"  {line}"))
    for section, rows in description.sections.items():
        table = Table(title=f"{section}", title_justify="left")
        table.add_column("key", no_wrap=True)
        table.add_column("type", max_width=28)
        table.add_column("default", max_width=20, overflow="fold")
        table.add_column("what it does", ratio=1)
        for row in rows:
            default = "(required)" if row.required else ("null" if row.default is None else repr(row.default))
            table.add_row(Text(row.name), Text(row.type), Text(default), Text(row.doc))
        console.print(table)


@command()
def dimension(
    file: Path = typer.Argument(..., help="An (N, D) table: HDF5, .npy, .npz, CSV or TSV."),
    key: Optional[str] = typer.Option(None, "--key", help="HDF5 dataset or .npz member (default: the only 2-D one)."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated column names or indices (CSV)."),
    method: str = typer.Option("all", "--method", help="all, two_nn, mle or local_pca: which estimate to suggest."),
    max_points: int = typer.Option(5000, "--max-points", min=10, help="Subsample this many rows at most."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subsample and of the spread's subsets."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of estimate vs neighbourhood size "
                                        "(default: dimension_<file stem>.png here)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing PNG."),
) -> None:
    """Estimate the intrinsic dimension of your data and suggest model.latent_dim.

    Three classic estimators (TwoNN, Levina–Bickel MLE over neighbourhood sizes, local PCA), each with its spread
    over random subsets, on the standardized rows. Example: mflow dimension events.h5 --key features.
    """
    from .dimension import estimate_file_dimension

    methods = ("all", "two_nn", "mle", "local_pca")
    if method not in methods:
        raise ConfigError(f"--method must be one of {', '.join(methods)}, got {method!r}")
    png = plot or Path(f"dimension_{file.stem}.png")
    from ..io import refuse_overwrite

    refuse_overwrite(png, force)
    cols = None if columns is None else [int(c) if c.strip().lstrip("-").isdigit() else c.strip()
                                         for c in columns.split(",")]
    with console.status("estimating the intrinsic dimension"):
        report = estimate_file_dimension(file, key=key, columns=cols, method=method, max_points=max_points,
                                         seed=seed, plot=png)
    table = Table(title=Text(f"intrinsic dimension of {file} ({report.result.n_points:,} points, D = {report.dim})"))
    for col, justify in (("estimator", "left"), ("estimate", "right"), ("spread (std over subsets)", "right"),
                         ("what it measures", "left")):
        table.add_column(col, justify=justify)
    for name, label in report.rows:
        table.add_row(name, f"{report.result.estimates[name]:.2f}", f"{report.result.spread[name]:.2f}", label)
    console.print(table)
    console.print(Text(f"wrote {png}"))
    console.print(Text(f"suggested model.latent_dim: {report.suggestion}", style="bold"))
    console.print(Text(f"  {report.train_command}"), soft_wrap=True)


@command()
def bench(
    repeats: int = typer.Option(20, "--repeats", "-r", min=1, help="Timed calls per row (median reported)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", min=1, help="torch intra-op threads."),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes (a smoke test, not a benchmark)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    flows: bool = typer.Option(True, "--flows/--no-flows", help="Also time the 9-step RQ coupling flows."),
    models: bool = typer.Option(
        True, "--models/--no-models", help="Also time a DNF training step and the on-manifold density (CPU)."
    ),
    info: bool = typer.Option(False, "--info", help="Only print which kernel path is active."),
    growth: bool = typer.Option(False, "--growth", help="Only the cost-growth rows: M-flow's exact NLL up to "
                                "D = 1,000 and the on-manifold density at D = 12,288 (each in a fresh process)."),
) -> None:
    """Time the fused kernels against the pure-PyTorch reference path, side by side in one run."""
    import torch

    from ..bench import model_rows, run_bench
    from ..kernels import backend_info

    console.print(f"mflow {__version__}: {backend_info()}; torch {torch.__version__}")
    if info:
        return
    if growth:
        from ..bench import growth_rows

        with console.status("timing the cost growth (a process per size)"):
            grown = growth_rows(threads=threads)
        table = Table(title="cost growth: time and peak memory per point")
        for col in ("task", "d", "D", "batch", "ms / point", "peak MB / point", "research method ms / point"):
            table.add_column(col, justify="left" if col == "task" else "right")
        for r in grown:
            research = "" if r.research_seconds_per_point is None else f"{1e3 * r.research_seconds_per_point:,.1f}"
            table.add_row(r.task, str(r.latent_dim), f"{r.data_dim:,}", str(r.batch),
                          f"{1e3 * r.seconds_per_point:.2f}", f"{r.peak_mb_per_point:.2f}", research)
        console.print(table)
        return
    with console.status("benchmarking"):
        rows = run_bench(repeats=repeats, threads=threads, quick=quick, device=device, flows=flows)
    table = Table(title=f"mflow vs baselines ({device}, {torch.get_num_threads() if threads is None else threads} "
                        f"thread(s), median of {repeats} paired rounds)")
    for col in ("kernel vs baseline", "size", "pass"):
        table.add_column(col)
    for col in ("baseline ms", "mflow ms", "speed-up", "max |Δ|"):
        table.add_column(col, justify="right")
    for r in rows:
        diff = "other model" if r.max_abs_diff != r.max_abs_diff else f"{r.max_abs_diff:.1e}"
        table.add_row(r.kernel, r.size, r.mode, f"{r.reference_ms:.3f}", f"{r.fused_ms:.3f}", f"{r.speedup:.2f}×",
                      diff)
    console.print(table)
    if not models or device != "cpu":
        return
    with console.status("timing the thin-spiral DNF"):
        end_to_end = model_rows(repeats=repeats, quick=quick, threads=threads)
    table = Table(title="thin-spiral DNF end to end (recipes/dnf_spiral.yaml architecture), baselines named")
    for col in ("task", "baseline"):
        table.add_column(col)
    for col in ("baseline /s", "mflow /s", "speed-up", "max |Δ|"):
        table.add_column(col, justify="right")
    for r in end_to_end:
        table.add_row(r.task, r.baseline, f"{r.baseline_per_s:,.0f}", f"{r.mflow_per_s:,.0f}", f"{r.speedup:.1f}×",
                      f"{r.max_abs_diff:.1e}")
    console.print(table)


class _NoticeHandler(logging.Handler):
    """Library and recipe notices (e.g. an old key spelling) as one plain ``note:`` line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(Text(f"note: {record.getMessage()}"), soft_wrap=True)


def _error(message: str, code: int) -> None:
    """Print one ``error:`` line (newlines shown as ``\\n``, never markup) and exit with ``code``."""
    line = str(message).replace("\r", "\\r").replace("\n", "\\n")
    err_console.print(Text.assemble(("error:", "red"), " ", line), soft_wrap=True)
    sys.exit(code)


def _on_signal(signum, frame) -> None:
    """SIGINT/SIGTERM/SIGHUP end the command: atomic outputs are left unwritten, training saves.

    The ``KeyboardInterrupt`` raised here is lost when the signal lands inside a callback Python runs for
    its own housekeeping (a weakref or ``__del__`` callback, whose exceptions are printed and dropped), so
    the signal is also recorded: progress raises it again at the next batch, and :func:`run` exits 130
    even for a command that went on to finish.
    """
    _signalled.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


def _raise_if_signalled() -> None:
    if _signalled:
        raise KeyboardInterrupt


def _unraisable(args) -> None:
    """Our own interrupt, dropped inside a housekeeping callback, is not printed: it is raised again."""
    if not (_signalled and isinstance(args.exc_value, KeyboardInterrupt)):
        sys.__unraisablehook__(args)


class _StopsOnSignal:
    """A progress reporter that first raises an interrupt recorded but not yet delivered (see ``_on_signal``)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def start(self, description: str, total: int, done: int = 0) -> None:
        _raise_if_signalled()
        self.reporter.start(description, total, done)

    def advance(self, steps: int = 1, info: str = "") -> None:
        _raise_if_signalled()
        self.reporter.advance(steps, info)

    def finish(self) -> None:
        self.reporter.finish()


def _interrupted() -> None:
    name = _signalled[-1] if _signalled else "SIGINT"
    _error(f"interrupted ({name}); unfinished outputs were removed, finished ones and checkpoints kept", 130)


def run() -> None:
    """Console-script entry point: every failure becomes one line and its exit code."""
    log = logging.getLogger("mflow")
    if not any(isinstance(h, _NoticeHandler) for h in log.handlers):
        log.addHandler(_NoticeHandler())
        log.propagate = False
    warnings.filterwarnings("ignore", module="nflows")
    warnings.filterwarnings("ignore", message=".*triangular_solve is deprecated.*")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # nohup's SIGHUP and a background job's SIGINT stay ignored: the command keeps working as asked
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _on_signal)
    sys.unraisablehook = _unraisable
    try:
        code = app(standalone_mode=False)
    except (ConfigError, OutputError) as err:
        _error(str(err), err.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exc:
        if exc.exit_code:
            sys.exit(exc.exit_code)
    except typer.Abort:
        _interrupted()
    except OSError as err:  # a file operation mflow did not wrap itself: still one line, naming the file
        from ..io import describe_os_error

        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        _error(f"{where}{describe_os_error(err)}", 1)
    except Exception as exc:
        # The parser's usage errors (typer's vendored click): their own message and exit code 2.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("MFLOW_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (please report it; MFLOW_DEBUG=1 shows where)", 1)
    if code == 130 or _signalled:
        _interrupted()
    if code:
        sys.exit(code)
