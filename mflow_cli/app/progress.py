"""Progress of long work (training, sampling, encoding) on a terminal or in a log file.

On a terminal a rich bar per task; when output goes to a file or a pipe (a job on a cluster, ``> log.txt``) a plain
line every few percent or every minute, so a long run shows its progress while it runs. User-supplied text (run
names, paths) is never read as markup. The library reports to a :class:`Reporter` only through the training
monitor and the ``progress`` callbacks of :mod:`mflow_cli.app.runs`.
"""

from __future__ import annotations

import time
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from ..training import TrainingMonitor


class Reporter(Protocol):
    """What long work reports: a task with a known total, its advances, its end."""

    def start(self, description: str, total: int, done: int = 0) -> None: ...

    def advance(self, steps: int = 1, info: str = "") -> None: ...

    def finish(self) -> None: ...


class BarReporter:
    """A rich progress bar per task (terminals); started at the first task, so errors before it draw nothing."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}", markup=False, style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = None

    def start(self, description: str, total: int, done: int = 0) -> None:
        if not self.progress.live.is_started:
            self.progress.start()
        self.task = self.progress.add_task(description, total=total, completed=done, info="")

    def advance(self, steps: int = 1, info: str = "") -> None:
        self.progress.update(self.task, advance=steps, info=info)

    def finish(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()


class LineReporter:
    """Plain progress lines for logs: one every ``percent`` % of a task or every ``seconds``, and one at its end."""

    def __init__(self, console: Console, percent: float = 5.0, seconds: float = 60.0) -> None:
        self.console, self.percent, self.seconds = console, percent, seconds
        self.description, self.total, self.done = "", 0, 0
        self.started = self.last_time = 0.0
        self.last_done, self.info = 0, ""

    def start(self, description: str, total: int, done: int = 0) -> None:
        self.finish()
        self.description, self.total, self.done, self.last_done = description, total, done, done
        self.started = self.last_time = time.monotonic()

    def advance(self, steps: int = 1, info: str = "") -> None:
        self.done += steps
        self.info = info or self.info
        now = time.monotonic()
        step = max(self.total * self.percent / 100, 1)
        if self.done - self.last_done >= step or now - self.last_time >= self.seconds or self.done >= self.total:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        fraction = self.done / self.total if self.total else 1.0
        rate = (self.done - 0) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        parts = [f"{self.description}: {self.done:,}/{self.total:,} ({100 * fraction:.0f}%)"]
        if self.info:
            parts.append(self.info)
        parts.append(f"{elapsed:.0f} s elapsed" + (f", ETA {eta:.0f} s" if eta == eta else ""))
        self.console.print(Text("  ".join(parts)), soft_wrap=True)
        self.last_done, self.last_time = self.done, now

    def finish(self) -> None:
        if self.total and self.done != self.last_done:
            self._line(time.monotonic())
        self.total = 0


def reporter_for(console: Console) -> BarReporter | LineReporter:
    """A bar on a terminal, lines otherwise."""
    return BarReporter(console) if console.is_terminal else LineReporter(console)


class TrainingProgress(TrainingMonitor):
    """The training loop's monitor, reported as one task per phase with the epoch and running losses."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def phase_start(self, phase: str, total_steps: int, done_steps: int) -> None:
        self.reporter.start(phase, total_steps, done_steps)

    def step(self, phase: str, epoch: int, logs: dict[str, float]) -> None:
        info = f"epoch {epoch + 1}  " + "  ".join(f"{k} {v:.4g}" for k, v in logs.items())
        self.reporter.advance(1, info)
