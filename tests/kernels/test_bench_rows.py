"""``mflow bench``'s rows at tiny sizes (a smoke test of the comparisons, not a benchmark): every row names its
baseline, the paths compared agree where they compute the same thing, and zuko's rows appear when it is installed."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from mflow_cli import kernels
from mflow_cli.bench import flow_rows, growth_case, model_rows

needs_ext = pytest.mark.skipif(not kernels.extension_loaded(), reason="mflow_cli._C not built")


@needs_ext
def test_flow_rows_name_their_baselines():
    rows = flow_rows(repeats=1, quick=True)
    assert all(r.baseline and r.baseline in r.kernel.replace("zuko NSF", "zuko.flows.NSF") for r in rows)
    nflows_rows = [r for r in rows if r.baseline == "nflows"]
    assert len(nflows_rows) == 2 and all(r.max_abs_diff < 1e-3 for r in nflows_rows)
    zuko_rows = [r for r in rows if r.baseline == "zuko.flows.NSF"]
    assert len(zuko_rows) == (2 if importlib.util.find_spec("zuko") else 0)
    assert all(r.reference_ms > 0 and r.fused_ms > 0 and math.isnan(r.max_abs_diff) for r in zuko_rows)


def test_model_rows_compare_the_same_densities():
    training, one_node, density, grid, whole_pass = model_rows(repeats=1, quick=True, threads=1)
    assert "research method" in density.baseline and "research method" in grid.baseline
    assert "400-point grid" in grid.task and "step by step" in whole_pass.baseline
    assert "one autograd node each" in one_node.baseline and one_node.max_abs_diff < 1e-5
    for row in (training, one_node, density, grid, whole_pass):
        assert row.baseline_per_s > 0 and row.mflow_per_s > 0 and row.max_abs_diff < 1e-3


def test_growth_case_reports_time_and_memory_per_point():
    row = growth_case("density", 2, 64, 4, repeats=1)
    assert row.seconds_per_point > 0 and row.research_seconds_per_point > 0 and row.peak_mb_per_point >= 0
    with pytest.raises(ValueError, match="task must be"):
        growth_case("nope", 2, 64, 4)


@needs_ext
@pytest.mark.parametrize("device", ["blah", "cuda"])
def test_bench_refuses_a_device_it_cannot_time_in_one_line(mflow, capsys, device):
    """``mflow bench --device``: a name torch does not know, or CUDA where torch sees none (or where the extension
    has no CUDA kernels, so both sides would be the same PyTorch code), exits 2 with one line, before any row."""
    message = "is not a torch device"
    if device == "cuda":
        if torch.cuda.is_available() and kernels.ext.with_cuda:
            pytest.skip("CUDA and its kernels are here: the bench runs")
        message = "CUDA kernels" if torch.cuda.is_available() else "sees no CUDA device"
    assert mflow("bench", "--device", device, "--quick", "-r", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and f"'{device}'" in err[0]
