"""The README's promises that code can check: the glossary names every evaluate key, the own-data script runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from mflow_cli.metrics.glossary import all_metrics

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_key_an_evaluator_can_emit_is_in_the_readme_glossary():
    glossary = README.read_text().partition("## Glossary of `mflow evaluate`")[2]
    missing = [key for table in all_metrics().values() for key in table if f"`{key}`" not in glossary]
    assert not missing, f"keys missing from the README glossary: {missing}"
    for table in all_metrics().values():
        for key, metric in table.items():
            row = next(line for line in glossary.splitlines() if line.startswith(f"| `{key}` |"))
            assert f"| {metric.unit} | {metric.better} |" in row, row


def test_the_readme_python_api_script_runs_as_written(tmp_path):
    section = README.read_text().partition("## Your own data")[2].partition("\n## ")[0]
    script = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "sheet" / "model.pt").exists()
    means = [float(v) for v in re.findall(r"-?\d+\.\d+", done.stdout.split("]")[0])]
    assert len(means) == 5 and all(abs(m - 5) < 3 for m in means), done.stdout  # samples in the file's units
