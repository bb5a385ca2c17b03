"""The training loop: resuming gives exactly the uninterrupted result; divergence stops cleanly."""

import pytest
import torch
import yaml
from helpers import StopAt

from mflow_cli import io
from mflow_cli.app.recipe import load_recipe
from mflow_cli.app.runs import train_run
from mflow_cli.errors import ConfigError
from mflow_cli.training import TrainingDiverged, TrainingInterrupted, TrainingMonitor


def params(run_dir):
    return io.load_torch(run_dir / "model.pt")["state_dict"]


@pytest.mark.parametrize("kind,stop", [("dnf", 7), ("mflow", 9)])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, tiny_recipe, kind, stop):
    overrides = [f"model.kind={kind}", "train.epochs=2", "train.checkpoint_every=3"]
    if kind == "mflow":
        overrides[1] = "train.epochs={manifold: 1, density: 2}"
    recipe = load_recipe(tiny_recipe, overrides)
    train_run(recipe, tmp_path / "straight")
    with pytest.raises(TrainingInterrupted):
        train_run(recipe, tmp_path / "cut", monitor=StopAt(stop))
    assert not (tmp_path / "cut" / "model.pt").exists()
    train_run(recipe, tmp_path / "cut", resume=True)
    a, b = params(tmp_path / "straight"), params(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [r["step"] for r in io.read_jsonl(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == sorted(set(steps))  # no duplicated epoch records after the resume


@pytest.mark.parametrize("stop", [4, 9], ids=["at-the-phase-boundary", "inside-the-density-phase"])
def test_a_vq_flow_resumed_equals_uninterrupted_and_starts_its_density_phase_once(tmp_path, stop, monkeypatch):
    """The density phase's start (chart weights from the training rows) runs once, whether the run was cut at
    the phase boundary (it runs after the resume) or inside the phase (it does not run again)."""
    from mflow_cli.models.vq_flow import VQFlow

    doc = {"name": "tiny_vq", "seed": 2, "data": {"name": "thin_spiral", "n_train": 400, "n_test": 100},
           "model": {"kind": "vq_flow", "num_charts": 3, "chart_layers": 2, "hidden_features": 8,
                     "background_weight": 0.01},
           "train": {"epochs": {"vq": 1, "density": 2}, "batch_size": 100, "checkpoint_every": 2}}
    path = tmp_path / "vq.yaml"
    path.write_text(yaml.safe_dump(doc))
    recipe = load_recipe(path)
    starts = []
    original = VQFlow.start_phase

    def counted(self, phase, training_rows):
        starts.append(phase)
        original(self, phase, training_rows)

    monkeypatch.setattr(VQFlow, "start_phase", counted)
    train_run(recipe, tmp_path / "straight")
    assert starts == ["vq", "density"]
    starts.clear()
    with pytest.raises(TrainingInterrupted):
        train_run(recipe, tmp_path / "cut", monitor=StopAt(stop))
    train_run(recipe, tmp_path / "cut", resume=True)
    assert starts == ["vq", "density"]
    a, b = params(tmp_path / "straight"), params(tmp_path / "cut")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["chart_logits"], torch.zeros(3))


def test_resume_from_a_periodic_checkpoint_alone(tmp_path, tiny_recipe):
    """As after SIGKILL: only the last periodic checkpoint survives, yet the result is the same."""
    recipe = load_recipe(tiny_recipe, ["train.epochs=2", "train.checkpoint_every=3"])
    train_run(recipe, tmp_path / "straight")
    saved = []

    class Snapshot(TrainingMonitor):
        def step(self, phase, epoch, logs):
            if (tmp_path / "cut" / "checkpoint.pt").exists() and not saved:
                saved.append((tmp_path / "cut" / "checkpoint.pt").read_bytes())

    train_run(recipe, tmp_path / "cut", monitor=Snapshot())
    (tmp_path / "cut" / "model.pt").unlink()
    (tmp_path / "cut" / "checkpoint.pt").write_bytes(saved[0])  # the state at step 3
    train_run(recipe, tmp_path / "cut", resume=True)
    a, b = params(tmp_path / "straight"), params(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_recipe(tmp_path, tiny_recipe):
    recipe = load_recipe(tiny_recipe, ["train.epochs=1"])
    train_run(recipe, tmp_path / "run")
    with pytest.raises(ConfigError, match="recipe differs"):
        train_run(load_recipe(tiny_recipe, ["train.lr=0.1"]), tmp_path / "run", resume=True)
    # A larger epoch budget is allowed: it continues training.
    train_run(load_recipe(tiny_recipe, ["train.epochs=2"]), tmp_path / "run", resume=True)
    assert io.read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["epoch"] == 2


def test_non_finite_losses_stop_training_and_keep_the_checkpoint(tmp_path, tiny_recipe):
    doc = yaml.safe_load(tiny_recipe.read_text())
    doc["train"].update({"epochs": 3, "max_nonfinite_steps": 2})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    recipe = load_recipe(path)
    run_dir = tmp_path / "run"

    from mflow_cli.models.manifold_flow import ManifoldFlow

    original = ManifoldFlow.loss
    calls = {"n": 0}

    def flaky(self, x, phase):
        calls["n"] += 1
        loss, logs = original(self, x, phase)
        return (loss * float("nan") if calls["n"] > 4 else loss), logs

    ManifoldFlow.loss = flaky
    try:
        with pytest.raises(TrainingDiverged, match="non-finite"):
            train_run(recipe, run_dir)
    finally:
        ManifoldFlow.loss = original
    state = io.load_torch(run_dir / "checkpoint.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_tensorboard_event_files_hold_the_epoch_records(tmp_path):
    pytest.importorskip("tensorboard")
    from helpers import tiny_recipe
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mflow_cli.app.recipe import validate as validate_recipe
    from mflow_cli.app.runs import train_run as train_recipe

    doc = tiny_recipe(train={"epochs": 2, "batch_size": 100, "tensorboard": True})
    run = train_recipe(validate_recipe(doc, "tb.yaml"), tmp_path / "run")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"joint/loss", "joint/val_loss", "joint/lr"} <= tags
    records = io.read_jsonl(run / "metrics.jsonl")
    assert [e.value for e in events.Scalars("joint/loss")] == pytest.approx([r["loss"] for r in records])


def test_early_stopping_on_validation_rows_stops_after_patience_and_keeps_the_best_epoch(tmp_path):
    from helpers import tiny_recipe

    from mflow_cli.app.recipe import validate

    doc = tiny_recipe(train={"epochs": 30, "batch_size": 100, "lr": 3e-3, "validation_fraction": 0.25,
                             "early_stopping_patience": 2})
    run = train_run(validate(doc, "es.yaml"), tmp_path / "run")
    records = io.read_jsonl(run / "metrics.jsonl")
    losses = [r["val_loss"] for r in records]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert records[-1]["val_best_epoch"] == best + 1
    assert len(records) <= best + 1 + 2  # stopped once 2 epochs brought no better validation loss (or ran out)
    assert len(records) < 30 or best >= 27


def test_early_stopping_on_the_test_split_is_refused(tmp_path):
    from helpers import tiny_recipe

    from mflow_cli.app.recipe import validate

    doc = tiny_recipe(train={"epochs": 3, "batch_size": 100, "early_stopping_patience": 2})
    with pytest.raises(ConfigError, match="needs validation rows"):
        train_run(validate(doc, "es.yaml"), tmp_path / "run")


class _SwitchesSeen(TrainingMonitor):
    """Records CUDA's TF32 switches (matmul, cuDNN) as every training step sees them."""

    def __init__(self) -> None:
        self.seen: set[tuple[bool, bool]] = set()

    def step(self, phase, epoch, logs) -> None:
        self.seen.add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))


@pytest.mark.parametrize("precision,during", [(None, (True, False)), ("float32", (False, False)),
                                               ("tf32", (True, True)), ("bf16", (False, False))])
def test_train_precision_sets_the_tf32_switches_for_the_run_and_restores_them(tmp_path, device, precision, during):
    from helpers import tiny_recipe

    from mflow_cli.app.recipe import validate

    doc = tiny_recipe(device=device.type, train={"epochs": 1, "batch_size": 100, "precision": precision})
    recipe = validate(doc, "precision.yaml")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False  # null keeps these
    try:
        if precision == "tf32" and device.type != "cuda":
            with pytest.raises(ConfigError, match="'train.precision' tf32 is a mode of CUDA"):
                train_run(recipe, tmp_path / "run")
            assert not (tmp_path / "run").exists()  # refused before the run folder was made
            return
        monitor = _SwitchesSeen()
        train_run(recipe, tmp_path / "run", monitor=monitor)
        assert monitor.seen == {during}
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _FlushSeen(TrainingMonitor):
    """Records whether every training step's CPU arithmetic flushes subnormal numbers to zero."""

    def __init__(self) -> None:
        self.seen: set[bool] = set()

    def step(self, phase, epoch, logs) -> None:
        from mflow_cli.training import flushes_subnormals

        self.seen.add(flushes_subnormals())


def test_training_flushes_subnormals_and_restores_the_setting(tmp_path):
    from helpers import tiny_recipe

    from mflow_cli.app.recipe import validate
    from mflow_cli.training import flushes_subnormals

    recipe = validate(tiny_recipe(train={"epochs": 1, "batch_size": 100}), "flush.yaml")
    torch.set_flush_denormal(False)
    assert not flushes_subnormals() and float(torch.tensor([1e-39]) * 2.0) > 0
    monitor = _FlushSeen()
    train_run(recipe, tmp_path / "run", monitor=monitor)
    assert monitor.seen == {True}
    assert not flushes_subnormals()


def test_bf16_training_runs_its_forward_passes_in_bfloat16_and_keeps_float32_weights(tmp_path, device):
    """Same seed, same batches: the bf16 run's losses differ from float32's by bfloat16 rounding (8 mantissa
    bits, so about 1e-2 relative), not by orders of magnitude; weights and the held-out loss stay float32."""
    from helpers import tiny_recipe

    from mflow_cli.app.recipe import validate

    records = {}
    for precision in ("float32", "bf16"):
        doc = tiny_recipe(device=device.type, train={"epochs": 2, "batch_size": 100, "precision": precision})
        run = train_run(validate(doc, "precision.yaml"), tmp_path / precision)
        records[precision] = io.read_jsonl(run / "metrics.jsonl")
        weights = [v for v in params(run).values() if v.is_floating_point()]  # (permutations are int64 buffers)
        assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)
    for full, half in zip(records["float32"], records["bf16"], strict=True):
        assert full["loss"] != half["loss"]  # autocast was on
        assert half["loss"] == pytest.approx(full["loss"], rel=0.05, abs=0.05)
        assert half["val_loss"] == pytest.approx(full["val_loss"], rel=0.05, abs=0.05)
