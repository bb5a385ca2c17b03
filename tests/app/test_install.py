"""A non-editable install carries the recipes: `mflow train dnf_spiral` works from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_non_editable_install_trains_a_shipped_recipe_by_name_from_another_folder(tmp_path):
    target = tmp_path / "site"
    env = {**os.environ, "MFLOW_NO_EXT": "1", "PIP_NO_INDEX": "1"}  # the pure-PyTorch path: no compile in this test
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT)], check=True, env=env, capture_output=True, timeout=600)
    shipped = sorted(p.name for p in (target / "mflow_cli" / "recipes").glob("*.yaml"))
    assert "dnf_spiral.yaml" in shipped and len(shipped) == len(list((ROOT / "recipes").glob("*.yaml")))
    work = tmp_path / "elsewhere"
    work.mkdir()
    run_env = {**env, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import mflow_cli; print(mflow_cli.__file__)"], cwd=work,
                           env=run_env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip().startswith(str(target))  # the installed copy, not the checkout
    done = subprocess.run([sys.executable, "-m", "mflow_cli", "train", "dnf_spiral", "--set", "train.epochs=1",
                           "--set", "data.n_train=200", "--set", "model.outer_layers=2", "--out", "run"],
                          cwd=work, env=run_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (work / "run" / "model.pt").exists()
    listing = subprocess.run([sys.executable, "-m", "mflow_cli", "recipes"], cwd=work, env=run_env,
                             capture_output=True, text=True, check=True, timeout=120)
    assert "dnf_spiral" in listing.stdout and "thin spiral" in listing.stdout
