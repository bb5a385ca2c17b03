"""Shared fixtures: tiny recipes that train in seconds, and the device the device-aware tests run on
(``pytest --device cuda``; default cpu)."""

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu",
                     help="torch device of the device-aware tests (kernels, posterior flows, the model contract): "
                          "cpu (default), cuda or cuda:N")


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--device")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise pytest.UsageError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device {name!r}: the tests run on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name!r}: this torch sees no CUDA device ({torch.__version__})")


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """The device the device-aware tests put their tensors and models on (``--device``)."""
    return torch.device(pytestconfig.getoption("--device"))


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
