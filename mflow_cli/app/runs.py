"""Runs: a folder holding one trained model and what was made from it.

``RUN_DIR/model.pt`` (final weights + resolved recipe + data shape + versions), ``checkpoint.pt``
(resume state), ``metrics.jsonl`` (one record per epoch), ``recipe.yaml`` (resolved), and the outputs
of evaluate/plot. This module joins recipes, datasets, models and I/O; the CLI only calls it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import distributed, io
from ..datasets.arrays import Standardization
from ..datasets.base import Dataset, HeldOut, TableData
from ..errors import ConfigError, OutputError
from ..jacobian import batched_jacobian, logdet_gram
from ..metrics.glossary import metadata_block
from ..models.base import Model
from ..models.interfaces import ManifoldModel
from ..training import TrainConfig, TrainingMonitor, flushed_subnormals, train
from . import catalog
from .allocator import return_freed_buffers
from .recipe import Recipe, short_repr, validate, write_yaml

if TYPE_CHECKING:
    from .progress import Reporter

log = logging.getLogger("mflow")
DENSITY_OUTPUTS = ("log_prob", "log_prob_ambient", "elbo")
"""The outputs of ``encode`` that are log densities of its input."""

SPLIT_FILE = "split.json"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "recipe.yaml"
LOCK_FILE = ".lock"
RUN_FILES = (MODEL_FILE, CHECKPOINT_FILE, METRICS_FILE, RECIPE_FILE, LOCK_FILE)
MAX_SAMPLES = 2**40


# --------------------------------------------------------------------------- one writer, outputs with consent


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock: one writer at a time (an OS lock, released by the kernel if the holder dies).

    A second writer is refused with the holder's PID; the lock file is never followed through a symlink. A folder
    this call created is removed again when nothing but the lock was written into it.
    """
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {io.describe_os_error(err)} (the run folder's lock)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            created = False  # the folder is the holder's
            raise ConfigError(
                f"{run_dir} is in use by another mflow process (PID {holder}); wait for it to finish or stop it"
            ) from None
        with io.writing(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if created and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} == {LOCK_FILE}:
            path.unlink()
            run_dir.rmdir()
        os.close(fd)  # releases the lock


def _is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in (MODEL_FILE, CHECKPOINT_FILE, RECIPE_FILE))


def check_output(out: str | Path, force: bool, inputs: tuple[str | Path, ...] = ()) -> None:
    """Refuse an output path that would replace an input or a run's own files (``--force`` or not), or an
    existing file without ``--force``."""
    out = Path(out)
    target = out.resolve()
    for inp in inputs:
        if Path(inp).resolve() == target or (out.exists() and Path(inp).exists() and os.path.samefile(inp, out)):
            raise ConfigError(f"{out} is also an input of this command; write the output somewhere else")
    if target.name in RUN_FILES and _is_run_folder(target.parent):
        raise ConfigError(f"{out} is a file of the run in {target.parent}; mflow never writes over it")
    io.refuse_overwrite(out, force)


def build_dataset(recipe: Recipe) -> Dataset:
    """The recipe's dataset; a bad argument value is reported as ``SOURCE: data: message``."""
    kwargs = {k: v for k, v in recipe.data.items() if k != "name"}
    try:
        return catalog.dataset_class(recipe.data["name"])(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{recipe.source}: data: {err}") from None


def build_model(recipe: Recipe, data_shape: tuple[int, ...]) -> Model:
    """The recipe's model for data of ``data_shape``; bad values are reported as ``SOURCE: model: message``."""
    kwargs = {k: v for k, v in recipe.model.items() if k != "kind"}
    try:
        return catalog.model_kind(recipe.model["kind"]).build(data_shape, **kwargs)
    except ConfigError as err:
        raise ConfigError(f"{recipe.source}: model: {err}") from None


def evaluation(recipe: Recipe) -> catalog.Evaluation:
    """How the recipe's model kind is evaluated and plotted on the recipe's dataset."""
    entry = catalog.model_kind(recipe.model["kind"])
    return entry.evaluation_for(catalog.dataset_class(recipe.data["name"]))


def pick_device(recipe: Recipe) -> torch.device:
    if recipe.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("recipe asks for device 'cuda' but no CUDA device is available")
    if recipe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(recipe.device)


def set_threads(recipe: Recipe, data_shape: tuple[int, ...]) -> None:
    """Tiny 2-D/3-D models run faster on one thread here; bigger ones use every core.

    Under torchrun the cores are shared by the node's ranks (LOCAL_WORLD_SIZE of them).
    """
    if recipe.threads is not None:
        n = recipe.threads
    else:
        per_rank = (os.cpu_count() or 1) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
        n = 1 if torch.Size(data_shape).numel() <= 16 else max(per_rank, 1)
    torch.set_num_threads(n)


class _RunMonitor(TrainingMonitor):
    """Appends each epoch record to metrics.jsonl (and TensorBoard's event files when asked), then forwards
    every hook to the caller's monitor."""

    def __init__(self, metrics_path: Path, inner: TrainingMonitor | None, tensorboard: bool = False):
        self.metrics_path, self.inner = metrics_path, inner or TrainingMonitor()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "train.tensorboard needs the tensorboard package: pip install tensorboard (or mflow[tensorboard])"
                ) from None
            self.writer = SummaryWriter(str(metrics_path.parent / "tensorboard"))

    def phase_start(self, phase, total_steps, done_steps):
        self.inner.phase_start(phase, total_steps, done_steps)

    def step(self, phase, epoch, logs):
        self.inner.step(phase, epoch, logs)

    def epoch_end(self, record):
        record = {**record, "time": time.time()}
        io.append_jsonl(record, self.metrics_path)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step", "time"):
                    self.writer.add_scalar(f"{record['phase']}/{key}", value, record["step"])
            self.writer.flush()
        self.inner.epoch_end(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _written_before(recipe: Recipe, checkpoint: dict) -> Callable[[dict], bool]:
    """Whether an epoch record of metrics.jsonl was written before ``checkpoint`` (a resume keeps only those).

    A record closes epoch ``epoch`` (1-based) of its phase; the checkpoint sits in epoch ``checkpoint["epoch"]``
    (0-based) of phase ``checkpoint["phase"]``, so a record written after a checkpoint taken at the very end of an
    epoch (before the record) is dropped and written again, with the same values, when the resume closes it.
    """
    kwargs = {k: v for k, v in recipe.model.items() if k != "kind"}
    phases = catalog.model_kind(recipe.model["kind"]).cls.phase_names(**kwargs)
    position = (checkpoint["phase"], checkpoint["epoch"])

    def keep(record: dict) -> bool:
        if record.get("phase") in phases and isinstance(record.get("epoch"), int):
            return (phases.index(record["phase"]), record["epoch"]) <= position
        return record.get("step", 0) < checkpoint["step"]

    return keep


def _comparable(recipe: dict) -> dict:
    """A recipe without the keys that may change on resume (the epoch budget)."""
    out = {k: v for k, v in recipe.items()}
    out["train"] = {k: v for k, v in recipe["train"].items() if k != "epochs"}
    return out


def train_run(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    monitor: TrainingMonitor | None = None,
) -> Path:
    """Train the recipe's model into ``out_dir``; with ``resume``, continue from its checkpoint.

    Under ``torchrun`` (WORLD_SIZE > 1) every rank trains its shard under DistributedDataParallel and
    only rank 0 writes into ``out_dir`` (a folder all ranks can read, for ``--resume``).
    """
    out_dir = Path(out_dir)
    device = pick_device(recipe)
    TrainConfig(**recipe.train).check_device(device, recipe.source)
    dist = distributed.from_env(device)
    main = dist is None or dist.is_main
    if dist is not None:
        device = dist.device(device)
    with run_lock(out_dir) if main else contextlib.nullcontext():
        _train_into(recipe, out_dir, device, dist, main, resume, force, monitor)
    return out_dir


def _train_into(
    recipe: Recipe, out_dir: Path, device: torch.device, dist: distributed.Distributed | None, main: bool,
    resume: bool, force: bool, monitor: TrainingMonitor | None,
) -> None:
    """The body of :func:`train_run`, holding the run folder's lock (rank 0)."""
    ckpt_path = out_dir / CHECKPOINT_FILE
    resume_state = None
    if resume:
        if not ckpt_path.is_file():
            raise ConfigError(f"--resume: no checkpoint in {out_dir} (expected {ckpt_path})")
        resume_state = io.load_torch(ckpt_path)
        saved = resume_state.get("recipe")
        if isinstance(saved, dict):
            saved = validate(saved, str(ckpt_path)).to_dict()
        if not isinstance(saved, dict) or _comparable(saved) != _comparable(recipe.to_dict()):
            raise ConfigError(f"--resume: the recipe differs from the one {out_dir} was trained with")
        if main:
            io.truncate_jsonl(out_dir / METRICS_FILE, _written_before(recipe, resume_state))
    elif (out_dir / MODEL_FILE).exists() or ckpt_path.exists():
        if not force:
            raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue or --force to start over")
        for name in (MODEL_FILE, CHECKPOINT_FILE, METRICS_FILE) if main else ():
            (out_dir / name).unlink(missing_ok=True)
    if dist is not None:
        dist.barrier()  # every rank has read the folder before rank 0 writes into it

    dataset = build_dataset(recipe)
    config = TrainConfig(**recipe.train)
    units = None
    if isinstance(dataset, TableData):  # the user's own table: checked, then read in batches (streamed if large)
        dataset.check_rows(config.batch_size)
        units = dataset.standardization
        if main:
            io.write_json(dataset.split_info(), out_dir / SPLIT_FILE)
    data, held_out = _training_rows(dataset, config, recipe)
    shape = tuple(dataset.data_shape) if isinstance(dataset, TableData) else tuple(data.shape[1:])
    if isinstance(data, torch.Tensor):
        data = data.to(device)
    set_threads(recipe, shape)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, shape).to(device)
    if dist is not None:
        dist.reseed(recipe.seed, 0)
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(recipe.to_dict(), out_dir / RECIPE_FILE)

    def save_checkpoint(state: dict) -> None:
        if not out_dir.is_dir():  # deleted or unmounted under the running job: do not quietly recreate it
            raise OutputError(f"cannot write {ckpt_path}: the run folder {out_dir} is gone; nothing more is saved")
        io.save_torch({**state, "recipe": recipe.to_dict(), "data_shape": list(shape)}, ckpt_path)

    run_monitor = _RunMonitor(out_dir / METRICS_FILE, monitor, config.tensorboard) if main else None
    try:
        train(model, data, config, seed=recipe.seed, resume_state=resume_state,
              save_checkpoint=save_checkpoint if main else None, monitor=run_monitor if main else monitor,
              batch_transform=dataset.batch_transform, dist=dist, held_out=held_out)
    finally:
        if run_monitor is not None:
            run_monitor.close()
    if main:
        save_model(model, recipe, shape, out_dir / MODEL_FILE, units)
    if dist is not None:
        dist.close()


HELD_OUT_ROWS = 2000
"""Test rows scored each epoch for the held-out curve when no validation rows are held out."""


def _training_rows(dataset: Dataset, config: TrainConfig, recipe: Recipe) -> tuple[Any, torch.Tensor]:
    """The rows to train on and the held-out rows scored after every epoch.

    With ``train.validation_fraction`` a seeded share of the training rows is held out (training never sees
    them; early stopping selects on them); else the dataset's own validation split (:class:`HeldOut`, e.g.
    ``data.n_validation``); otherwise up to :data:`HELD_OUT_ROWS` test rows give the curve, and early stopping,
    which would then select on the test set, is refused.
    """
    if isinstance(dataset, HeldOut) and config.validation_fraction == 0:
        validation = dataset.validation_data()
        if len(validation):
            return dataset.train_data(), validation
    if config.validation_fraction == 0 and config.early_stopping_patience is not None:
        raise ConfigError(
            f"{recipe.source}: train.early_stopping_patience needs validation rows (train.validation_fraction > 0 "
            "or the dataset's own validation split); stopping on the test split would select on the test set"
        )
    if config.validation_fraction > 0:
        if isinstance(dataset, TableData) and dataset.streams:
            raise ConfigError(
                f"{recipe.source}: train.validation_fraction needs the training rows in memory; this file is "
                "streamed (over data.stream_threshold_mb): give held-out rows with data.test_path instead"
            )
        rows = dataset.train_data()
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(recipe.seed + 7919))
        k = max(1, round(config.validation_fraction * len(rows)))
        with torch.random.fork_rng():  # into the model's space as test rows are (e.g. binarized), drawn once
            torch.manual_seed(recipe.seed + 7919)
            validation = dataset.batch_transform(rows[order[:k]])
        return rows[order[k:]], validation
    data = dataset.batch_source() if isinstance(dataset, TableData) else dataset.train_data()
    return data, dataset.test_data()[:HELD_OUT_ROWS]


def save_model(
    model: Model, recipe: Recipe, data_shape: tuple[int, ...], path: Path, units: Standardization | None = None
) -> None:
    """model.pt: weights, the resolved recipe, the data shape, versions and (own data) the units' standardization."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {"state_dict": state, "recipe": recipe.to_dict(), "data_shape": list(data_shape), "versions": io.versions()}
    if units is not None:
        blob["standardization"] = units.state()
    io.save_torch(blob, path)


@dataclass(frozen=True)
class OpenRun:
    """A run folder's resolved recipe, its model (eval mode) and, for own data, the units' standardization."""

    recipe: Recipe
    model: Model
    units: Standardization | None

    def to_model_units(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the data's own units -> the model's (the identity without a standardization)."""
        if self.units is None:
            return x
        return self.units.to_model(x.reshape(len(x), -1)).to(x.dtype).reshape(x.shape)

    def to_original_units(self, x: torch.Tensor) -> torch.Tensor:
        """Points the model made (samples, projections) -> the data's own units."""
        if self.units is None:
            return x
        return self.units.to_original(x.reshape(len(x), -1)).to(x.dtype).reshape(x.shape)

    def manifold_density_shift(self, x: torch.Tensor) -> torch.Tensor:
        """What turns the on-manifold log density at the projection of ``x`` (model units, (B, D)) into the
        density w.r.t. the manifold's volume in the data's own units.

        With y = (x − mean) / std the decoder in the data's units is x = mean + std ⊙ g(u), whose Jacobian is
        S J_g (S = diag std), so log p changes by −½ log det(J_gᵀ S² J_g) + ½ log det(J_gᵀ J_g) (M-flow eq. 3 in
        both coordinates); for d = D this is the ambient −Σ log std.
        """
        model = self.model
        if model.latent_dim == model.data_dim:
            return x.new_full((len(x),), self.units.log_abs_det_to_model)
        u = model.project(x)[0]
        _, jac = batched_jacobian(model.decode, u)
        scaled = jac * self.units.std.to(jac)[None, :, None]
        return 0.5 * (logdet_gram(jac) - logdet_gram(scaled))

    def outputs_to_original_units(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Log densities among ``encode``'s outputs for inputs ``x`` (model units) as densities in the data's
        units: ambient ones (and ELBOs) shift by log|det ∂y/∂x| = −Σ log std, on-manifold ones by
        :meth:`manifold_density_shift`."""
        if self.units is None:
            return out
        out = dict(out)
        shift = self.units.log_abs_det_to_model
        for key in ("log_prob_ambient", "elbo"):
            if key in out:
                out[key] = out[key] + shift
        if "log_prob" in out:
            if isinstance(self.model, ManifoldModel):
                with torch.no_grad():
                    out["log_prob"] = out["log_prob"] + self.manifold_density_shift(x.reshape(len(x), -1))
            elif self.model.latent_dim == int(torch.Size(self.model.data_shape).numel()):
                out["log_prob"] = out["log_prob"] + shift
            else:
                raise ConfigError("densities on a lower-dimensional atlas cannot be converted to the data's units")
        return out

MAX_DATA_DIMS = 2**28


def open_run(run_dir: str | Path, device: str | None = None) -> OpenRun:
    """Rebuild the trained model of a run folder (weights loaded with ``weights_only=True``).

    Refused with one line: a missing or unfinished run, a file that is not an mflow model, a data shape no model
    could have, weights that do not fit or are not finite. Process-wide settings (torch's thread count) are left
    alone; the commands set them (:func:`load_for_command`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    path = run_dir / MODEL_FILE
    if not path.is_file():
        unfinished = (run_dir / CHECKPOINT_FILE).exists()
        hint = " (training unfinished? resume it with mflow train --resume)" if unfinished else ""
        raise ConfigError(f"{run_dir}: no {MODEL_FILE}{hint}")
    blob = io.load_torch(path)
    for key in ("state_dict", "recipe", "data_shape"):
        if key not in blob:
            raise ConfigError(f"{path}: not an mflow model file (no '{key}')")
    shape_value = blob["data_shape"]
    if (
        not isinstance(shape_value, (list, tuple)) or not 1 <= len(shape_value) <= 4
        or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 2**20 for s in shape_value)
        or torch.Size(shape_value).numel() > MAX_DATA_DIMS
    ):
        raise ConfigError(f"{path}: data_shape {short_repr(shape_value)} is not the shape of one sample")
    if not isinstance(blob["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in blob["state_dict"].values()
    ):
        raise ConfigError(f"{path}: not an mflow model file (state_dict holds non-tensors)")
    bad = [k for k, v in blob["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ConfigError(f"{path}: {len(bad)} weight tensor(s) hold NaN or inf (e.g. {bad[0]}); refusing the model")
    recipe = validate(blob["recipe"], str(path))
    shape = tuple(int(s) for s in shape_value)
    model = build_model(recipe, shape)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise ConfigError(f"{path}: weights do not fit the model ({str(err).splitlines()[0][:100]})") from None
    model.to(torch.device(device) if device else pick_device(recipe)).eval()
    units = None
    if "standardization" in blob:
        try:
            units = Standardization.from_state(blob["standardization"])
        except (ConfigError, KeyError, TypeError) as err:
            raise ConfigError(f"{path}: unreadable standardization ({err})") from None
    return OpenRun(recipe, model, units)


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[Recipe, Model]:
    """The recipe and model of a run folder (:func:`open_run` without the units)."""
    run = open_run(run_dir, device)
    return run.recipe, run.model


def load_for_command(run_dir: str | Path) -> OpenRun:
    """:func:`open_run`, then the recipe's thread count (the CLI commands run one job per process)."""
    run = open_run(run_dir)
    set_threads(run.recipe, run.model.data_shape)
    return run


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(batch_size, n - start)


def sample_to_h5(
    run_dir: str | Path,
    n: int,
    out: str | Path,
    *,
    batch_size: int = 10000,
    seed: int = 0,
    force: bool = False,
    progress: Reporter | None = None,
) -> Path:
    """Draw ``n`` samples into HDF5 dataset ``samples`` (n, *data_shape), batch by batch."""
    if not 1 <= n <= MAX_SAMPLES or batch_size < 1:
        raise ConfigError(f"-n must be in 1..2^40 and --batch-size at least 1, got {n} and {batch_size}")
    check_output(out, force, inputs=(Path(run_dir) / MODEL_FILE,))
    run = load_for_command(run_dir)
    recipe, model = run.recipe, run.model
    torch.manual_seed(seed)
    attrs = {"model": recipe.model["kind"], "recipe": recipe.name, "seed": seed, "mflow": io.versions()["mflow"]}
    with io.H5Writer(out, {"samples": (n, *model.data_shape)}, attrs) as writer:
        if progress:
            progress.start("sample", n)
        for start, size in _batches(n, batch_size):
            writer.write(start, {"samples": run.to_original_units(model.sample(size))})
            if progress:
                progress.advance(size)
    return Path(out)


def encode_h5(
    run_dir: str | Path,
    inp: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    batch_size: int = 1000,
    force: bool = False,
    progress: Reporter | None = None,
    external_links: bool = False,
) -> Path:
    """Encode every row of ``inp``'s dataset into ``latents`` (and ``log_prob`` where the model has it).

    ``external_links``: follow a dataset that is an HDF5 external link into another file (refused otherwise).
    """
    check_output(out, force, inputs=(inp, Path(run_dir) / MODEL_FILE))
    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    run = load_for_command(run_dir)
    recipe, model = run.recipe, run.model
    name, n = io.open_h5_input(inp, dataset, model.data_shape, allow_external_links=external_links)
    device = next(model.parameters()).device
    probe = model.encode(torch.zeros(1, *model.data_shape, device=device))
    shapes = {key: (n, *value.shape[1:]) for key, value in probe.items()}
    attrs = {"model": recipe.model["kind"], "recipe": recipe.name, "input": str(inp), "dataset": name}
    with io.H5Writer(out, shapes, attrs) as writer:
        if progress:
            progress.start("encode", n)
        non_finite = 0
        for start, batch in io.iter_h5_batches(inp, name, batch_size):
            x = run.to_model_units(batch).to(device)
            encoded = run.outputs_to_original_units(x, model.encode(x))
            non_finite += sum(int((~torch.isfinite(encoded[k])).sum()) for k in DENSITY_OUTPUTS if k in encoded)
            writer.write(start, encoded)
            if progress:
                progress.advance(len(batch))
    if non_finite:
        log.warning("%s: %d log densities are -inf or NaN (inputs far outside the data the model was trained on?)",
                    out, non_finite)
    return Path(out)


@contextlib.contextmanager
def scoring_settings() -> Iterator[None]:
    """What a long scoring pass (a test set, thousands of draws per example) runs under: large freed buffers go
    back to the system (:func:`~mflow_cli.app.allocator.return_freed_buffers`, from then on) and subnormal
    floats are flushed to zero inside the block (:func:`~mflow_cli.training.flushed_subnormals`; a flow-VAE's
    activations fall into float32's subnormal range, which x86 cores compute slowly)."""
    return_freed_buffers()
    with flushed_subnormals():
        yield


def evaluate_run(run_dir: str | Path, out: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Run the evaluator with the recipe's ``evaluate`` options; write JSON (default ``RUN_DIR/evaluation.json``).

    An ``out`` of the caller's follows the same rule as ``sample``/``encode``: an existing file needs ``force``.
    """
    run_dir = Path(run_dir)
    if out is not None:
        check_output(out, force, inputs=(run_dir / MODEL_FILE,))
    run = load_for_command(run_dir)
    recipe, model = run.recipe, run.model
    with run_lock(run_dir):
        dataset = build_dataset(recipe)
        scoring = evaluation(recipe)
        with scoring_settings():
            metrics = scoring.evaluate(model, dataset, scoring.options(**recipe.evaluate))
        if run.units is not None:
            metrics = _log_likelihoods_to_original_units(run, dataset, metrics)
        report = {**metrics, "metadata": metadata_block(metrics)}
        io.write_json(report, out or run_dir / "evaluation.json")
    return metrics


def _log_likelihoods_to_original_units(run: OpenRun, dataset: Dataset, metrics: dict[str, Any]) -> dict[str, Any]:
    """Own data: the test log-likelihoods as densities in the file's units (the evaluators work in model units)."""
    metrics = dict(metrics)
    if metrics.get("test_log_likelihood_ambient") is not None:
        metrics["test_log_likelihood_ambient"] += run.units.log_abs_det_to_model
    if metrics.get("test_log_likelihood_manifold") is not None and isinstance(run.model, ManifoldModel):
        test = dataset.test_data().reshape(len(dataset.test_data()), -1)
        device = next(run.model.parameters()).device
        with torch.no_grad():
            shift = torch.cat([run.manifold_density_shift(c.to(device)).cpu() for c in torch.split(test, 500)])
        metrics["test_log_likelihood_manifold"] += float(shift.mean())
    return metrics


def plot_run(run_dir: str | Path, samples: str | Path | None = None, samples_dataset: str | None = None,
             max_samples: int = 100_000) -> list[Path]:
    """Draw the family's figures into ``RUN_DIR/plots``; return their paths.

    ``samples``: an HDF5 file of the model's samples (e.g. from ``mflow sample``) to draw instead of fresh ones
    (its first ``max_samples`` rows).
    """
    run = load_for_command(run_dir)
    recipe, model = run.recipe, run.model
    given = None
    if samples is not None:
        name, n = io.open_h5_input(samples, samples_dataset, model.data_shape)
        rows = [batch for _, batch in io.iter_h5_batches(samples, name, min(n, max_samples))][:1]
        given = run.to_model_units(rows[0]) if rows else None
        if given is None:
            raise ConfigError(f"{samples}: holds no samples (0 rows)")
    with run_lock(Path(run_dir)):
        dataset = build_dataset(recipe)
        records = io.read_jsonl(Path(run_dir) / METRICS_FILE)
        out_dir = Path(run_dir) / "plots"
        out_dir.mkdir(parents=True, exist_ok=True)
        drawing = evaluation(recipe)
        options, figures = drawing.options(**recipe.evaluate), drawing.figures(**recipe.plot)
        return drawing.plot(model, dataset, records, out_dir, options, figures, samples=given)
