"""The training loop shared by every model family.

A model says which phases it trains (``model.phases()``, e.g. ``["manifold", "density"]`` for M-flow's
sequential schedule) and gives a loss per phase (``model.loss(x, phase)``). The loop is deterministic
given the seed: each epoch's shuffle comes from its own generator, and the global RNG state (used for
noise inflation) travels in the checkpoint, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from .errors import ConfigError
from .models.base import Model

if TYPE_CHECKING:
    from .distributed import Distributed


@dataclass
class TrainConfig:
    """The recipe's ``train`` section.

    Extending a finished run (``--resume`` with more ``epochs``) continues from the step it reached with the
    cosine schedule of the new budget: the learning rate is the longer schedule's value at that step.

    Arguments:
        epochs: Epochs per phase: one number for every phase, or a mapping ``{phase: epochs}``.
        batch_size: Training rows per step (the global batch under torchrun).
        lr: The AdamW learning rate at the start of each phase.
        weight_decay: AdamW's decoupled weight decay.
        lr_schedule: ``cosine`` (to 0 at the end of each phase) or ``constant``.
        grad_clip: The largest gradient norm (clipped above it); null for no clipping.
        checkpoint_every: Steps between checkpoints (also written after every epoch and on Ctrl-C).
        max_nonfinite_steps: Steps with a NaN/inf loss or gradient skipped before training stops.
        validation_fraction: Training rows held out (seeded) for the held-out loss and early stopping;
            0 uses up to 2,000 test rows for the held-out curve only.
        early_stopping_patience: Stop a phase after this many epochs without a better held-out loss and keep
            its best weights (needs validation rows: validation_fraction > 0 or the dataset's own validation
            split, e.g. data.n_validation); null trains every epoch.
        tensorboard: Also write TensorBoard event files into RUN_DIR/tensorboard (needs the tensorboard package).
        precision: The arithmetic of the training steps: null keeps torch's defaults (on CUDA: TF32 for cuDNN
            convolutions, full float32 matrix products); ``float32`` is full float32 everywhere (TF32 off);
            ``tf32`` lets CUDA matrix products and convolutions use TF32 tensor cores (CUDA only); ``bf16``
            runs each step's forward pass under bfloat16 autocast (matrix products and convolutions in bfloat16,
            float32 weights, gradients and optimizer; the compiled kernels step aside, as they are float32 /
            float64 code). The held-out losses are always scored in float32.
    """

    epochs: int | dict[str, int] = 50
    batch_size: int = 100
    lr: float = 3e-4
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    grad_clip: float | None = 5.0
    checkpoint_every: int = 1000
    max_nonfinite_steps: int = 50
    validation_fraction: float = 0.0
    early_stopping_patience: int | None = None
    tensorboard: bool = False
    precision: Literal["float32", "tf32", "bf16"] | None = None

    def check(self, phases: list[str], source: str = "recipe") -> None:
        """Raise :class:`ConfigError` for values no run could use."""
        if isinstance(self.epochs, dict):
            for key, value in self.epochs.items():
                if key not in phases:
                    raise ConfigError(
                        f"{source}: {f'train.epochs.{key}'!r} is not a phase of this model ({', '.join(phases)})"
                    )
                if value < 0:
                    raise ConfigError(f"{source}: 'train.epochs.{key}' must be >= 0")
        elif self.epochs < 0:
            raise ConfigError(f"{source}: 'train.epochs' must be >= 0")
        for key in ("batch_size", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{source}: 'train.{key}' must be >= 1")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"{source}: 'train.lr' must be a finite number > 0")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"{source}: 'train.weight_decay' must be a finite number >= 0")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ConfigError(f"{source}: 'train.grad_clip' must be a finite number > 0 (or null for no clipping)")
        if self.max_nonfinite_steps < 0:
            raise ConfigError(f"{source}: 'train.max_nonfinite_steps' must be >= 0")
        if sum(self.epochs_for(p) for p in phases) < 1:
            raise ConfigError(f"{source}: 'train.epochs' trains nothing (0 epochs in every phase); give at least 1")
        if not 0 <= self.validation_fraction <= 0.5:
            raise ConfigError(f"{source}: 'train.validation_fraction' must be in 0..0.5")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(f"{source}: 'train.early_stopping_patience' must be >= 1 (or null)")

    def check_device(self, device: torch.device, source: str = "recipe") -> None:
        """Raise :class:`ConfigError` where the device cannot run ``precision``."""
        if self.precision == "tf32" and device.type != "cuda":
            raise ConfigError(f"{source}: 'train.precision' tf32 is a mode of CUDA tensor cores, and this run is on "
                              f"{device.type} (use bf16, float32 or null)")

    def epochs_for(self, phase: str) -> int:
        if isinstance(self.epochs, dict):
            return self.epochs.get(phase, 0)
        return self.epochs


class TrainingMonitor:
    """Hooks the loop calls; the CLI overrides them to draw progress bars. All are no-ops here."""

    def phase_start(self, phase: str, total_steps: int, done_steps: int) -> None: ...

    def step(self, phase: str, epoch: int, logs: dict[str, float]) -> None: ...

    def epoch_end(self, record: dict[str, Any]) -> None: ...


class TrainingDiverged(ConfigError):
    """Too many non-finite losses; the last good checkpoint is left as it was."""


class TrainingInterrupted(ConfigError):
    """Ctrl-C (SIGINT) or SIGTERM: progress was saved; ``--resume`` continues."""

    exit_code = 130


class _StopRequest:
    """SIGINT/SIGTERM/SIGHUP during training: finish the current step, then save and stop.

    Stopping between steps keeps the checkpoint consistent (parameters, optimizer, counters and RNG all
    at the same step). A second Ctrl-C stops at once; the last checkpoint is then kept as it was.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) is signal.SIG_IGN:  # ignored by the caller (nohup, a background job)
                    continue
                old = signal.signal(sig, self._handle)
                self._old[sig] = signal.SIG_DFL if old is None else old
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class BatchSource(ABC):
    """Training rows served in shuffled batches, every row exactly once per epoch.

    The loop passes each epoch its own seeded ``generator``, so an epoch's batches depend only on
    (seed, phase, epoch): a resumed run asks for the same epoch from batch ``start`` on and gets the
    batches the interrupted run would have seen. A source must draw its randomness from ``generator``
    alone (never the global RNG, which the loop keeps for the model's own noise).
    """

    @abstractmethod
    def __len__(self) -> int:
        """Rows per epoch."""

    @abstractmethod
    def batches(self, batch_size: int, generator: torch.Generator, start: int = 0) -> Iterator[torch.Tensor]:
        """Batches ``start``, ``start + 1``, ... of the epoch whose shuffle ``generator`` draws.

        Batch b holds rows ``b * batch_size`` to ``(b + 1) * batch_size`` of the epoch's order (the
        last may be short), so there are ``ceil(len(self) / batch_size)`` batches in an epoch.
        """


class TensorBatches(BatchSource):
    """An in-memory tensor (N, *shape): each epoch is one ``randperm`` of its rows."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def batches(self, batch_size: int, generator: torch.Generator, start: int = 0) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self), generator=generator)
        for b in range(start, math.ceil(len(self) / batch_size)):
            yield self.data[order[b * batch_size : (b + 1) * batch_size]]


def _epoch_generator(seed: int, phase_index: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + phase_index * 10_007 + epoch)


def _extend_schedule(optimizer: torch.optim.Optimizer, scheduler, total_steps: int) -> None:
    """A resumed phase whose budget changed (``--resume`` with more epochs) follows the new budget's cosine
    schedule from the step it reached, instead of running past the old schedule's end (where the cosine climbs
    again)."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == max(total_steps, 1):
        return
    scheduler.T_max = max(total_steps, 1)
    step = min(scheduler.last_epoch, scheduler.T_max)
    factor = 0.5 * (1 + math.cos(math.pi * step / scheduler.T_max))
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def _make_optimizer(model: torch.nn.Module, phase: str, config: TrainConfig, total_steps: int):
    params = [p for p in model.phase_parameters(phase) if p.requires_grad]
    # fused: one kernel for the whole step (CPU and CUDA); 4.3 -> 1.3 ms of a ~25 ms thin-spiral DNF step
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler


def train(
    model: torch.nn.Module,
    data: torch.Tensor | BatchSource,
    config: TrainConfig,
    *,
    seed: int = 0,
    resume_state: dict | None = None,
    save_checkpoint: Callable[[dict], None] | None = None,
    monitor: TrainingMonitor | None = None,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dist: Distributed | None = None,
    held_out: torch.Tensor | None = None,
) -> dict:
    """Train ``model`` on ``data`` through all its phases; return the final loop state.

    ``data`` is a tensor (N, *shape) held in memory, or a :class:`BatchSource` such as a file read in
    batches (:class:`~mflow_cli.datasets.arrays.ArrayDataset` for large files); batches are moved to
    the model's device.

    ``save_checkpoint(state)`` is called every ``config.checkpoint_every`` steps, after each epoch and
    on Ctrl-C/SIGTERM, with everything needed to resume (model, optimizer, scheduler, RNG state,
    position). With ``dist`` (under torchrun) the model trains under DistributedDataParallel, each rank
    on its shard of every batch; pass ``save_checkpoint`` on rank 0 only.

    ``held_out`` rows (validation or test) give each epoch record its held-out losses (``val_<key>``, the
    phase's loss on them with the model in eval mode and a fixed seed for its noise, so the training RNG is
    untouched); with ``config.early_stopping_patience`` a phase stops when ``val_loss`` has not improved for
    that many epochs, and the model ends with the phase's best weights.
    """
    loop = _Loop(model, data, config, seed, save_checkpoint, monitor or TrainingMonitor(), batch_transform)
    config.check_device(loop.device)
    loop.dist, loop.held_out = dist, held_out
    with _tf32(config.precision), flushed_subnormals():
        return loop.run(resume_state)


def flushes_subnormals() -> bool:
    """Whether this thread's CPU float arithmetic flushes subnormal numbers (below 1.2e-38 in float32) to zero."""
    return float(torch.tensor([1e-39]) * 2.0) == 0.0


@contextmanager
def flushed_subnormals() -> Iterator[None]:
    """CPU float arithmetic with subnormal numbers flushed to zero (``torch.set_flush_denormal``), restored
    afterwards.

    Weights and activations drift into the subnormal range as a model trains, and x86 cores take a slow path for
    each such operand (a planar K = 40 flow-VAE's epoch grew from 14 to 24 s over 300 epochs). Flushing changes
    results only below 1.2e-38. Training runs under it, and so does scoring (``mflow_cli.app.runs.scoring_settings``).
    """
    was = flushes_subnormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was)


@contextmanager
def _tf32(precision: str | None) -> Iterator[None]:
    """CUDA's TF32 switches as ``train.precision`` asks (null: left as they are), restored afterwards."""
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = [b.allow_tf32 for b in backends]
    if precision is not None:
        for backend in backends:
            backend.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        for backend, value in zip(backends, saved, strict=True):
            backend.allow_tf32 = value


class _Loop:
    """The state of one training run: where it is (phase, epoch, batch) and its optimizer."""

    def __init__(self, model, data, config, seed, save_checkpoint, monitor, batch_transform):
        self.model, self.config, self.seed = model, config, seed
        self.source = data if isinstance(data, BatchSource) else TensorBatches(data)
        self.device = next(model.parameters()).device
        self.save, self.monitor, self.batch_transform = save_checkpoint, monitor, batch_transform
        self.steps_per_epoch = math.ceil(len(self.source) / config.batch_size)
        self.step = self.nonfinite = 0
        self.phase_index = self.epoch = self.batch = 0
        self.optimizer = self.scheduler = None
        self.forward = model.loss
        self.dist: Distributed | None = None
        self.stop = _StopRequest()
        self.in_step = False  # True between a step's first computation and its counters' update
        self.held_out: torch.Tensor | None = None
        self.sums: dict[str, float] = {}  # the running epoch's loss sums and step count (in checkpoints)
        self.count = 0
        self.best: dict[str, Any] | None = None  # early stopping: the phase's best val_loss, epoch and weights

    def state(self) -> dict:
        out = {
            "model": self.model.state_dict(),
            "rng": torch.get_rng_state(),
            "phase": self.phase_index,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "nonfinite": self.nonfinite,
            "epoch_sums": dict(self.sums),
            "epoch_count": self.count,
        }
        if self.best is not None:
            out["best"] = self.best
        if torch.cuda.is_available():
            out["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.optimizer is not None:
            out["optimizer"] = self.optimizer.state_dict()
            out["scheduler"] = self.scheduler.state_dict()
        return out

    def checkpoint(self) -> None:
        """Save the resume state; refuse to replace the last good checkpoint with non-finite weights."""
        if self.save is None:
            return
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise TrainingDiverged(
                f"training stopped: parameters became non-finite by step {self.step}; "
                "the last good checkpoint is kept; try a lower train.lr or a train.grad_clip"
            )
        self.save(self.state())

    def run(self, resume: dict | None) -> dict:
        if resume is not None:
            torch.set_rng_state(resume["rng"])
            if "cuda_rng" in resume and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(resume["cuda_rng"])
            self.phase_index = resume["phase"]
            for key in ("epoch", "batch", "step", "nonfinite"):
                setattr(self, key, resume[key])
            self.sums, self.count = dict(resume.get("epoch_sums", {})), int(resume.get("epoch_count", 0))
            self.best = resume.get("best")
            if self.dist is not None:
                self.dist.reseed(self.seed, self.step)
        phases = self.model.phases()
        try:
            with self.stop:
                while self.phase_index < len(phases):
                    self._run_phase(phases[self.phase_index], resume)
                    resume = None
                    self.phase_index += 1
                    self.epoch = self.batch = 0
                    self.best = None
                    self.optimizer = self.scheduler = None
                    if self.phase_index < len(phases):
                        self.checkpoint()
        except KeyboardInterrupt:
            if self.in_step:  # a forced stop inside a step: its state is not consistent, keep the last one
                raise TrainingInterrupted(
                    f"interrupted inside step {self.step + 1}: the last checkpoint is kept; continue with --resume"
                ) from None
            self.checkpoint()
            raise TrainingInterrupted(
                f"interrupted: progress saved at step {self.step}; continue with --resume"
            ) from None
        self.model.eval()
        return {"step": self.step, "nonfinite": self.nonfinite}

    def _run_phase(self, phase: str, resume: dict | None) -> None:
        epochs = self.config.epochs_for(phase)
        total = epochs * self.steps_per_epoch
        resuming = resume is not None and "optimizer" in resume
        if not resuming and isinstance(self.model, Model):
            self.model.start_phase(phase, self._training_rows)
        self.optimizer, self.scheduler = _make_optimizer(self.model, phase, self.config, total)
        if self.dist is not None:
            self.forward = self.dist.wrap(self.model, next(self.model.parameters()).device)
        if resuming:
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            _extend_schedule(self.optimizer, self.scheduler, total)
        self.monitor.phase_start(phase, total, self.epoch * self.steps_per_epoch + self.batch)
        self.model.train()
        while self.epoch < epochs and not self._patience_spent():
            self._run_epoch(phase)
            self.epoch += 1
            self.batch = 0
            self.checkpoint()
        if self.best is not None:  # early stopping: end the phase on its best weights
            self.model.load_state_dict(self.best["model"])

    def _training_rows(self, n: int) -> torch.Tensor:
        """Up to ``n`` training rows, batch-transformed, from a fixed shuffle; the training RNG is not moved."""
        rows, count = [], 0
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for x in self.source.batches(self.config.batch_size, torch.Generator().manual_seed(self.seed)):
                x = x.to(self.device)
                rows.append(x if self.batch_transform is None else self.batch_transform(x))
                count += len(x)
                if count >= n:
                    break
        return torch.cat(rows)[:n]

    def _patience_spent(self) -> bool:
        patience = self.config.early_stopping_patience
        return patience is not None and self.best is not None and self.epoch - self.best["epoch"] >= patience

    @torch.no_grad()
    def _held_out_logs(self, phase: str) -> dict[str, float]:
        """The phase's loss terms on the held-out rows (eval mode; noise from a fixed seed, global RNG kept)."""
        if self.held_out is None or len(self.held_out) == 0:
            return {}
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, float] = {}
        n = 0
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        # the alternating schedule has no objective of its own: score both of its phases and add them
        scored = ["manifold", "density"] if phase == "alternating" else [phase]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            for x in torch.split(self.held_out, self.config.batch_size):
                for part in scored:
                    loss, logs = self.model.loss(x.to(self.device), part)
                    for key, value in {"loss": loss.item(), **logs}.items():
                        sums[key] = sums.get(key, 0.0) + value * len(x)
                n += len(x)
        self.model.train(was_training)
        return {f"val_{k}": v / n for k, v in sums.items()}

    def _run_epoch(self, phase: str) -> None:
        cfg = self.config
        generator = _epoch_generator(self.seed, self.phase_index, self.epoch)
        sums, count = self.sums, self.count  # a resumed epoch continues its running means
        for x in self.source.batches(cfg.batch_size, generator, start=self.batch):
            stop = self.stop.requested if self.dist is None else self.dist.any(self.stop.requested)
            if stop:
                raise KeyboardInterrupt
            if self.dist is not None:
                x = self.dist.shard(x)
            x = x.to(self.device)
            self.in_step = True
            if self.batch_transform is not None:
                x = self.batch_transform(x)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=cfg.precision == "bf16"):
                loss, logs = self.forward(x, phase)
            self.optimizer.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(loss)) if self.dist is None else not self.dist.any(not torch.isfinite(loss))
            if finite:
                loss.backward()
                if cfg.grad_clip is not None:
                    params = [p for g in self.optimizer.param_groups for p in g["params"]]
                    # A finite loss can still have inf/NaN gradients; stepping on them would ruin the weights.
                    finite = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)))
            if not finite:
                self.batch += 1
                self.nonfinite += 1
                self.in_step = False
                if self.nonfinite > cfg.max_nonfinite_steps:
                    raise TrainingDiverged(
                        f"training stopped: {self.nonfinite} non-finite losses (phase {phase}, epoch "
                        f"{self.epoch + 1}); the last good checkpoint is kept; try a lower train.lr"
                    )
                continue
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.batch += 1
            self.in_step = False
            logs = {"loss": loss.item(), **logs}
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            self.count = count
            self.monitor.step(phase, self.epoch, logs)
            if self.step % cfg.checkpoint_every == 0:
                self.checkpoint()
        record = {"phase": phase, "epoch": self.epoch + 1, "step": self.step}
        record["lr"] = self.scheduler.get_last_lr()[0]
        if self.dist is not None:
            record.update(self.dist.mean(sums, count))
        else:
            record.update({k: v / max(count, 1) for k, v in sums.items()})
        record["nonfinite_steps"] = self.nonfinite
        record.update(self._held_out_logs(phase))
        if cfg.early_stopping_patience is not None and record.get("val_loss") is not None:
            if self.best is None or record["val_loss"] < self.best["val_loss"]:
                state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self.best = {"val_loss": record["val_loss"], "epoch": self.epoch, "model": state}
            record["val_best_epoch"] = self.best["epoch"] + 1
        self.sums, self.count = {}, 0
        self.monitor.epoch_end(record)
