"""python -m mflow_cli.experiments.image_step_profile on a tiny image model: one row with times and shares."""

from __future__ import annotations

import pytest

from mflow_cli.experiments import image_step_profile

TINY = ["model.hidden_features=8", "model.num_blocks=1", "model.outer_layers=1", "model.inner_layers=1"]


def test_profile_of_a_tiny_image_step(capsys):
    rows = image_step_profile.main(["--resolutions", "8", "--rounds", "1", *[a for o in TINY for a in ("--set", o)]])
    (row,) = rows
    assert row["resolution"] == 8 and row["levels"] == 1 and row["batch"] == 25
    assert row["mflow_step_ms"] > 0 and row["nflows_step_ms"] > 0 and row["encode_ms"] > 0
    assert sum(row["shares"].values()) == pytest.approx(1.0) and row["shares"]["convolutions"] > 0
    out = capsys.readouterr().out
    assert "| 8×8 | 1 |" in out and "speed-up" in out
