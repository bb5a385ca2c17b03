"""Shared fixtures: tiny recipes that train in seconds."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import helpers
import pytest
import torch
import yaml

warnings.filterwarnings("ignore", module="nflows")
torch.set_num_threads(1)


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A DNF on the thin spiral small enough to train in a few seconds."""
    doc = helpers.tiny_recipe()
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def mflow(monkeypatch):
    """Run the ``mflow`` console entry point in-process: ``mflow("train", recipe, ...)`` returns its exit code."""
    from mflow_cli.app.cli import run

    def call(*args) -> int:
        monkeypatch.setattr(sys, "argv", ["mflow", *map(str, args)])
        try:
            run()
        except SystemExit as exc:
            return exc.code or 0
        return 0

    return call
