"""`mflow train` under torchrun: DistributedDataParallel with gloo, 2 CPU processes on loopback.

One launch checks: rank 0 alone writes the run; both ranks end with identical parameters; each rank
sees exactly half of every batch; a NaN loss on one rank makes both skip that step (no hang); phases
with parameters outside their loss work; and the 2-process run matches a single process on the same
recipe (the gradient of the full batch is the mean of the two half-batch gradients) up to rounding.
"""

import json
import socket
import subprocess
import sys

import torch
import yaml
from helpers import tiny_recipe

from mflow_cli import io
from mflow_cli.app.recipe import validate
from mflow_cli.app.runs import build_model, train_run
from mflow_cli.models.manifold_flow import ManifoldFlow

# M-flow's sequential schedule: two phases, each training a part of the model (a new DDP per phase,
# parameters unused in a phase); no noise inflation, so one process and two see the same gradients.
RECIPE = tiny_recipe(name="ddp", seed=5, train={"epochs": {"manifold": 1, "density": 1}, "batch_size": 100,
                                                "checkpoint_every": 3})
RECIPE["model"]["kind"] = "mflow"
for section in ("evaluate", "plot"):
    del RECIPE[section]
NAN_AT_CALL = 3  # rank 1's third loss is NaN; rank 0's is fine

# Runs on every rank: the real CLI entry point, with the model captured and rank 1's 3rd loss made NaN.
WORKER = f"""
import json, os, sys
import torch
from mflow_cli.app import runs
from mflow_cli.app.cli import run
from mflow_cli.models.manifold_flow import ManifoldFlow

rank = int(os.environ["RANK"])
models, rows, calls = [], [], [0]
build = runs.build_model
runs.build_model = lambda *a, **k: models.append(build(*a, **k)) or models[-1]
loss = ManifoldFlow.loss

def counted(self, x, phase):
    if not self.training:  # held-out losses after each epoch (eval mode) are not training steps
        return loss(self, x, phase)
    calls[0] += 1
    rows.append(len(x))
    value, logs = loss(self, x, phase)
    return (value * float("nan") if rank == 1 and calls[0] == {NAN_AT_CALL} else value), logs

ManifoldFlow.loss = counted
out = sys.argv[-1]
sys.argv = ["mflow", "train", *sys.argv[1:]]
run()
torch.save(models[0].state_dict(), f"{{out}}.rank{{rank}}.pt")
with open(f"{{out}}.rank{{rank}}.json", "w") as fh:
    json.dump(rows, fh)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(tmp_path, monkeypatch):
    recipe_path = tmp_path / "ddp.yaml"
    recipe_path.write_text(yaml.safe_dump(RECIPE))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(script), str(recipe_path), "--out", str(out),
    ]  # fmt: skip
    env = {**__import__("os").environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("saved ") == 1  # only rank 0 prints

    # Rank 0 wrote the run; the ranks agree exactly, and with the saved model.
    for name in ("model.pt", "checkpoint.pt", "metrics.jsonl", "recipe.yaml"):
        assert (out / name).is_file(), name
    r0, r1 = (torch.load(f"{out}.rank{r}.pt", weights_only=True) for r in (0, 1))
    saved = io.load_torch(out / "model.pt")["state_dict"]
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
        assert torch.equal(r0[key], saved[key]), key

    # Each rank took half of every 100-row batch: 2 phases x 1 epoch x 4 batches x 50 rows.
    for r in (0, 1):
        assert json.loads(open(f"{out}.rank{r}.json").read()) == [50] * 8
    records = io.read_jsonl(out / "metrics.jsonl")
    assert [(r["phase"], r["step"]) for r in records] == [("manifold", 3), ("density", 7)]  # 1 step skipped
    assert records[-1]["nonfinite_steps"] == 1
    assert io.load_torch(out / "checkpoint.pt")["step"] == 7

    # Same recipe on one process, skipping the same batch: same parameters up to rounding.
    original, calls = ManifoldFlow.loss, [0]

    def skip_third(self, x, phase):
        if not self.training:
            return original(self, x, phase)
        calls[0] += 1
        value, logs = original(self, x, phase)
        return (value * float("nan") if calls[0] == NAN_AT_CALL else value), logs

    monkeypatch.setattr(ManifoldFlow, "loss", skip_third)
    train_run(validate(RECIPE, "ddp.yaml"), tmp_path / "single")
    single = io.load_torch(tmp_path / "single" / "model.pt")["state_dict"]
    # Adam divides by |gradient|, so a coordinate whose gradient is ~0 can turn rounding into a step of lr;
    # all others agree to rounding.
    gap = torch.cat([(single[k] - r0[k]).abs().flatten() for k in r0])
    torch.manual_seed(RECIPE["seed"])  # the untrained model, built as train_run builds it
    init = build_model(validate(RECIPE, "ddp.yaml"), (2,)).state_dict()
    moved = torch.cat([(init[k] - r0[k]).abs().flatten() for k in r0])
    print(f"DDP vs 1 process: {(gap > 1e-6).float().mean():.4%} of {gap.numel()} weights differ by >1e-6, "
          f"max {gap.max():.2e}; training moved {(moved > 1e-6).float().mean():.1%} of them")
    assert (gap > 1e-6).float().mean() < 0.005 and gap.max() <= 8 * 3e-4 * 1.01
    assert (moved > 1e-6).float().mean() > 0.4  # one phase trains the outer flow, the other the inner one
