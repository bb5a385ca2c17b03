"""What the experiment scripts share: running ``mflow`` commands in their own processes, one thread each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class CommandFailed(RuntimeError):
    """A command run by :func:`run_module` exited non-zero."""


def run_module(module: str, *args: str, threads: int = 1, log: Path | None = None) -> None:
    """``python -m MODULE ARGS`` in a fresh process on ``threads`` threads; with ``log``, its output goes to that
    file as it runs (a long training's progress lines can be followed there). A failure raises with the
    command's last error line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", module, *args]
    if log is None:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        errors = done.stderr
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        errors = log.read_text()
    if done.returncode != 0:
        raise CommandFailed(f"{module} {' '.join(args)} failed: {errors.strip().splitlines()[-1:]}")


def run_mflow(*args: str) -> None:
    """``mflow ARGS`` in a fresh process on one thread; a failure raises with the command's last error line."""
    run_module("mflow_cli", *args)


def train_and_evaluate(recipe: str, out: Path, overrides: Sequence[str] = (), reuse: bool = False) -> dict:
    """``mflow train RECIPE --set threads=1 --set ... --out OUT --force``, then ``mflow evaluate OUT``: the
    evaluation's metrics with ``train_minutes`` (wall clock, kept in ``OUT/train_minutes.json``). With ``reuse``,
    a run folder that already holds an ``evaluation.json`` is read instead of run again."""
    evaluation = out / "evaluation.json"
    if not (reuse and evaluation.is_file()):
        sets = [a for o in ("threads=1", *overrides) for a in ("--set", o)]
        start = time.perf_counter()
        run_mflow("train", recipe, *sets, "--out", str(out), "--force")
        (out / "train_minutes.json").write_text(json.dumps({"minutes": (time.perf_counter() - start) / 60}))
        run_mflow("evaluate", str(out))
    metrics = json.loads(evaluation.read_text())
    metrics["train_minutes"] = json.loads((out / "train_minutes.json").read_text())["minutes"]
    return metrics
