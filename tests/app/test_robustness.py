"""Robustness of real processes: SIGKILL/SIGINT/SIGTERM during training, atomic outputs, hostile inputs.

The kill tests run ``mflow train`` in a subprocess through a small driver that makes one chosen step
(or one checkpoint write) wait, so the signal lands at a known place on any machine speed, then
resume with the plain CLI and compare every parameter with an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers import restore_default_signals, tiny_recipe

from mflow_cli import io
from mflow_cli.app.recipe import validate
from mflow_cli.app.runs import train_run
from mflow_cli.errors import ConfigError
from mflow_cli.models.manifold_flow import ManifoldFlow
from mflow_cli.training import TrainingDiverged

# 3 epochs x 4 batches; checkpoints after steps 3, 4 (epoch), 6, 8 (epoch), 9, 12 (epoch).
RECIPE = tiny_recipe(name="robust", seed=11, train={"epochs": 3, "batch_size": 100, "checkpoint_every": 3})
for section in ("evaluate", "plot"):
    del RECIPE[section]

# Driver: the real CLI, with one loss call (HOLD_LOSS=k) or one torch.save call (HOLD_SAVE=k) held
# until GO_FILE appears. A held save has already written half of the checkpoint's temp file.
DRIVER = """
import io as _io, os, sys, time
import torch
from mflow_cli.app.cli import run
from mflow_cli.models.manifold_flow import ManifoldFlow

ready, go = os.environ["READY_FILE"], os.environ["GO_FILE"]
hold_loss, hold_save = int(os.environ.get("HOLD_LOSS", 0)), int(os.environ.get("HOLD_SAVE", 0))
calls = {"loss": 0, "save": 0}

def hold():
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.02)

loss = ManifoldFlow.loss
def held_loss(self, x, phase):
    if not self.training:  # the held-out losses after each epoch (eval mode) are not training steps
        return loss(self, x, phase)
    calls["loss"] += 1
    out = loss(self, x, phase)
    if calls["loss"] == hold_loss:
        hold()
    return out
ManifoldFlow.loss = held_loss

save = torch.save
def held_save(obj, f, *args, **kwargs):
    calls["save"] += 1
    if calls["save"] == hold_save:
        buf = _io.BytesIO()
        save(obj, buf)
        with open(f, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        hold()
    return save(obj, f, *args, **kwargs)
torch.save = held_save

from mflow_cli import training  # note when the loop's signal handler has run
handle = training._StopRequest._handle
def noted(self, signum, frame):
    handle(self, signum, frame)
    open(ready + ".signalled", "w").close()
training._StopRequest._handle = noted
sys.argv = ["mflow", *sys.argv[1:]]
run()
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robust")
    (root / "robust.yaml").write_text(yaml.safe_dump(RECIPE))
    (root / "driver.py").write_text(DRIVER)
    return root


@pytest.fixture(scope="module")
def straight(workdir) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final parameters."""
    train_run(validate(RECIPE, "robust.yaml"), workdir / "straight")
    return io.load_torch(workdir / "straight" / "model.pt")["state_dict"]


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in extra.items()}}


def _start_held(workdir: Path, run_dir: Path, **hold) -> tuple[subprocess.Popen, Path]:
    """Start ``mflow train`` and return once it is parked at the held call."""
    ready, go = run_dir.with_suffix(".ready"), run_dir.with_suffix(".go")
    cmd = [sys.executable, str(workdir / "driver.py"), "train", str(workdir / "robust.yaml"), "--out", str(run_dir)]
    proc = subprocess.Popen(
        cmd, env=_env(READY_FILE=ready, GO_FILE=go, **hold), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=restore_default_signals,
    )
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"driver never reached the held call (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    return proc, go


def _resume(workdir: Path, run_dir: Path, cli: bool = False) -> None:
    """``mflow train --resume`` in a fresh process (``cli``), else the same call in this one (faster)."""
    if not cli:
        train_run(validate(RECIPE, "robust.yaml"), run_dir, resume=True)
        return
    cmd = [sys.executable, "-m", "mflow_cli", "train", str(workdir / "robust.yaml"), "--out", str(run_dir), "--resume"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _assert_same(run_dir: Path, straight: dict[str, torch.Tensor]) -> None:
    final = io.load_torch(run_dir / "model.pt")["state_dict"]
    assert final.keys() == straight.keys()
    for key in straight:
        assert torch.equal(final[key], straight[key]), key
    steps = [r["step"] for r in io.read_jsonl(run_dir / "metrics.jsonl")]
    assert steps == [4, 8, 12]  # one record per epoch, none duplicated by the resume


# --------------------------------------------------------------------------- kills and signals


def test_sigkill_mid_step_then_resume_equals_uninterrupted(workdir, straight):
    run_dir = workdir / "killed"
    proc, _ = _start_held(workdir, run_dir, HOLD_LOSS=8)  # inside step 8: last checkpoint is step 6
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    state = io.load_torch(run_dir / "checkpoint.pt")
    assert state["step"] == 6 and (state["phase"], state["epoch"], state["batch"]) == (0, 1, 2)
    assert {"model", "optimizer", "scheduler", "rng", "step", "recipe"} <= state.keys()
    assert state["scheduler"]["last_epoch"] == 6 and len(state["optimizer"]["state"]) > 0
    assert not (run_dir / "model.pt").exists()
    _resume(workdir, run_dir, cli=True)
    _assert_same(run_dir, straight)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(workdir, straight):
    run_dir = workdir / "killed_in_save"
    proc, _ = _start_held(workdir, run_dir, HOLD_SAVE=3)  # the step-6 checkpoint is half written
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = list(run_dir.glob(".checkpoint.pt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the half-written temp file ...
    with pytest.raises(ConfigError):
        io.load_torch(partial[0])
    assert io.load_torch(run_dir / "checkpoint.pt")["step"] == 4  # ... never replaced the good one
    _resume(workdir, run_dir)
    _assert_same(run_dir, straight)
    assert not list(run_dir.glob(".*.tmp"))  # the resume cleared the dead temp file


def test_sigkill_between_an_epoch_record_and_its_checkpoint_leaves_no_duplicate_record(workdir, straight):
    """Step 12 closes epoch 3 and is a periodic checkpoint (save 6); the epoch's record follows, then the
    end-of-epoch checkpoint (save 7), killed here. The resume starts from save 6, at the very end of epoch 3:
    it must drop the record written after that checkpoint and write it again, complete, once."""
    run_dir = workdir / "killed_after_record"
    proc, _ = _start_held(workdir, run_dir, HOLD_SAVE=7)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert [r["epoch"] for r in io.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert io.load_torch(run_dir / "checkpoint.pt")["step"] == 12
    _resume(workdir, run_dir)
    _assert_same(run_dir, straight)
    last = io.read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert last["epoch"] == 3 and {"loss", "mse", "nll", "val_loss"} <= last.keys()


def test_extending_a_finished_run_follows_the_longer_cosine_schedule(tmp_path):
    """--resume with more epochs: the lr goes on down the new budget's schedule; it does not climb back."""
    doc = tiny_recipe(train={"epochs": 1, "batch_size": 100, "lr": 1e-3})
    run = train_run(validate(doc, "r.yaml"), tmp_path / "run")
    longer = tiny_recipe(train={"epochs": 2, "batch_size": 100, "lr": 1e-3})
    train_run(validate(longer, "r.yaml"), run, resume=True)
    lrs = [r["lr"] for r in io.read_jsonl(run / "metrics.jsonl")]
    assert lrs[0] < 1e-8 and lrs[1] < 1e-8  # the end of each budget's schedule, not base lr after a restart


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_finishes_the_step_saves_and_exits_cleanly(workdir, straight, sig):
    run_dir = workdir / f"signalled_{sig.name}"
    proc, go = _start_held(workdir, run_dir, HOLD_LOSS=7)  # inside step 7
    proc.send_signal(sig)
    signalled = Path(str(run_dir.with_suffix(".ready")) + ".signalled")
    deadline = time.monotonic() + 60
    while not signalled.exists():
        assert time.monotonic() < deadline, "the signal never reached the training loop"
        time.sleep(0.02)
    go.touch()  # let step 7 finish; the loop stops before step 8
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "error: interrupted: progress saved at step 7; continue with --resume"
    assert "Traceback" not in err
    state = io.load_torch(run_dir / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["batch"]) == (7, 1, 3)
    assert not list(run_dir.glob(".*.tmp"))
    _resume(workdir, run_dir)
    _assert_same(run_dir, straight)


# --------------------------------------------------------------------------- non-finite values


def _poison(monkeypatch, after: int, how: str) -> None:
    """Make every loss after the first ``after`` calls NaN, or finite with NaN gradients."""
    original, calls = ManifoldFlow.loss, [0]

    def poisoned(self, x, phase):
        if not self.training:  # held-out losses after each epoch (eval mode) are not training steps
            return original(self, x, phase)
        calls[0] += 1
        value, logs = original(self, x, phase)
        if calls[0] <= after:
            return value, logs
        if how == "loss":
            return value * float("nan"), logs
        p = next(self.parameters())
        nan_grad = torch.where(torch.tensor(False), (-p.abs() - 1).sqrt().sum(), torch.zeros(()))
        return value + nan_grad, logs  # value finite, d/dp NaN

    monkeypatch.setattr(ManifoldFlow, "loss", poisoned)


@pytest.mark.parametrize("how", ["loss", "gradient"])
def test_non_finite_steps_are_skipped_counted_and_stop_training(tmp_path, monkeypatch, capsys, how, mflow):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "train": {**RECIPE["train"], "max_nonfinite_steps": 3}}))
    _poison(monkeypatch, after=5, how=how)  # steps 1-5 fine, then 4 bad ones: stop on the 4th
    assert mflow("train", path, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training stopped: 4 non-finite losses (phase joint, epoch 3)"), err
    assert len(err.splitlines()) == 1 and "last good checkpoint is kept" in err
    state = io.load_torch(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 5 and state["nonfinite"] == 3  # epoch-2 checkpoint: 5 good, 3 skipped
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "run" / "model.pt").exists()


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    """Without gradient clipping NaN gradients reach the weights; the checkpoint then keeps the last good ones."""
    _poison(monkeypatch, after=5, how="gradient")
    recipe = validate({**RECIPE, "train": {**RECIPE["train"], "grad_clip": None}}, "r.yaml")
    with pytest.raises(TrainingDiverged, match="parameters became non-finite by step 6"):
        train_run(recipe, tmp_path / "run")
    state = io.load_torch(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_torn_metrics_line_after_a_kill_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 4}\n{"step": 8}\n{"st')
    assert io.read_jsonl(path) == [{"step": 4}, {"step": 8}]
    io.truncate_jsonl(path, 4)
    assert io.read_jsonl(path) == [{"step": 4}]
    path.write_text('{"step": 4}\nnot json\n{"step": 8}\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        io.read_jsonl(path)


# --------------------------------------------------------------------------- untrusted checkpoints


class _Payload:
    """Unpickling this would run ``exec`` and create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_malicious_checkpoint_is_refused_and_never_runs(workdir, straight, tmp_path, capsys, legacy, mflow):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "evil"
    run_dir.mkdir()
    state = io.load_torch(workdir / "straight" / "checkpoint.pt")
    state["rng"] = _Payload(marker)
    torch.save(state, run_dir / "checkpoint.pt", _use_new_zipfile_serialization=not legacy)
    code = mflow("train", workdir / "robust.yaml", "--out", run_dir, "--resume")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {run_dir / 'checkpoint.pt'}: refused to load: not a plain weights checkpoint")
    assert not marker.exists()
    # The same payload as a run's model file: sample/encode/evaluate refuse it too.
    torch.save({"state_dict": _Payload(marker)}, run_dir / "model.pt")
    for verb in (["sample", run_dir, "-n", 5, "-o", tmp_path / "s.h5"], ["evaluate", run_dir]):
        assert mflow(*verb) == 2
        assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "s.h5").exists()


def test_truncated_checkpoint_gives_one_line(workdir, straight, tmp_path, monkeypatch, capsys, mflow):
    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    data = (workdir / "straight" / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert mflow("train", workdir / "robust.yaml", "--out", run_dir, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "unreadable checkpoint" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- HDF5 in and out


def _h5(path: Path, chunks=None, **arrays) -> Path:
    with h5py.File(path, "w") as fh:
        for name, value in arrays.items():
            fh.create_dataset(name, data=value, chunks=chunks)
    return path


def _one_line_error(capsys, expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert expected in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda p: _h5(p, x=np.full((4, 2), np.inf, np.float32)), "row 0 holds NaN or inf"),
        (lambda p: _h5(p, x=np.zeros((4,), np.float32)), "shape (4,) does not match the model's (N, 2)"),
        (lambda p: _h5(p, x=np.zeros((4, 2, 1), np.float32)), "does not match the model's (N, 2)"),
        (lambda p: _h5(p, x=np.zeros((4, 2), np.complex64)), "is not floating point"),
        (lambda p: _h5(p, x=np.array([[b"a", b"b"]])), "is not floating point"),
        (lambda p: _h5(p), "pass --dataset NAME (datasets in the file: none)"),
        (lambda p: p.write_bytes(b"") or p, "not a readable HDF5 file"),
    ],
    ids=["inf", "1-d", "3-d", "complex", "bytes", "empty-file", "zero-bytes"],
)
def test_bad_hdf5_input_one_line_exit_2(workdir, straight, tmp_path, monkeypatch, capsys, make, expected, mflow):
    src = make(tmp_path / "in.h5")
    out = tmp_path / "out.h5"
    assert mflow("encode", workdir / "straight", src, "-o", out) == 2
    _one_line_error(capsys, expected)
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_truncated_hdf5_data_one_line_exit_2(workdir, straight, tmp_path, monkeypatch, capsys, mflow):
    """The header survives but the rows are cut off: refused with one line, nothing written."""
    src = _h5(tmp_path / "in.h5", chunks=(1000, 2), x=np.random.default_rng(0).random((20000, 2), np.float32))
    data = src.read_bytes()
    src.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out.h5"
    assert mflow("encode", workdir / "straight", src, "-o", out) == 2
    err = capsys.readouterr().err.strip()
    assert ("truncated" in err or "not a readable HDF5" in err) and len(err.splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_bad_row_after_the_first_batch_leaves_no_output(workdir, straight, tmp_path, monkeypatch, capsys, mflow):
    x = np.random.default_rng(1).random((2500, 2)).astype(np.float32)
    x[1700, 1] = np.nan
    src = _h5(tmp_path / "in.h5", x=x)
    out = tmp_path / "out.h5"
    assert mflow("encode", workdir / "straight", src, "-o", out, "--batch-size", 1000) == 2
    _one_line_error(capsys, "row 1700 holds NaN or inf")
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_encode_refuses_to_overwrite_without_force(workdir, straight, tmp_path, monkeypatch, capsys, mflow):
    src = _h5(tmp_path / "in.h5", x=np.random.default_rng(2).random((50, 2)).astype(np.float32))
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    assert mflow("encode", workdir / "straight", src, "-o", out) == 2
    _one_line_error(capsys, "exists; pass --force to overwrite it")
    assert out.read_bytes() == b"precious"
    assert mflow("encode", workdir / "straight", src, "-o", out, "--force") == 0
    with h5py.File(out) as fh:
        assert fh["latents"].shape == (50, 1) and np.isfinite(fh["log_prob"][:]).all()


def test_killed_sample_never_leaves_a_half_written_file(workdir, straight, tmp_path):
    """SIGKILL while `mflow sample` is between batches: the output path never appears."""
    out = tmp_path / "s.h5"
    ready, go = tmp_path / "ready", tmp_path / "go"
    driver = tmp_path / "sample_driver.py"
    driver.write_text(
        "import os, sys, time\n"
        "from mflow_cli.app.cli import run\n"
        "from mflow_cli.models.manifold_flow import ManifoldFlow\n"
        "calls = [0]\n"
        "sample = ManifoldFlow.sample\n"
        "def held(self, n):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 2:\n"
        f"        open({str(ready)!r}, 'w').close()\n"
        f"        while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        "    return sample(self, n)\n"
        "ManifoldFlow.sample = held\n"
        "sys.argv = ['mflow', *sys.argv[1:]]\n"
        "run()\n"
    )
    cmd = [sys.executable, str(driver), "sample", str(workdir / "straight"), "-n", "300", "--batch-size", "100",
           "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=restore_default_signals)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    partial = list(tmp_path.glob(".s.h5.*.tmp"))
    assert len(partial) == 1  # the first batch sits in a temp file ...
    proc.kill()
    proc.wait(timeout=30)
    assert not out.exists()  # ... and the output name never holds a partial file


def test_atomic_outputs_get_normal_permissions(tmp_path):
    """Temp files are private (mkstemp's 0600); the renamed output must be readable like any other file."""
    old = os.umask(0o022)
    try:
        io.write_json({"a": 1}, tmp_path / "m.json")
        io.save_torch({"w": torch.zeros(2)}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    for name in ("m.json", "c.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "train,message",
    [
        ({"lr": float("inf")}, "'train.lr' must be a finite number > 0"),
        ({"lr": float("nan")}, "'train.lr' must be a finite number > 0"),
        ({"weight_decay": -1.0}, "'train.weight_decay' must be a finite number >= 0"),
        ({"grad_clip": float("nan")}, "'train.grad_clip' must be a finite number > 0"),
        ({"grad_clip": 0.0}, "'train.grad_clip' must be a finite number > 0"),
        ({"max_nonfinite_steps": -1}, "'train.max_nonfinite_steps' must be >= 0"),
        ({"epochs": {"joint\nx": 1}}, "'train.epochs.joint\\nx' is not a phase"),
    ],
)
def test_train_settings_no_run_could_use_are_refused(train, message):
    with pytest.raises(ConfigError) as err:
        validate({**RECIPE, "train": {**RECIPE["train"], **train}}, "r.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_refusal_to_overwrite_prints_only_the_error(workdir, straight, tmp_path, monkeypatch, capsys, mflow):
    out = tmp_path / "s.h5"
    out.write_bytes(b"precious")
    assert mflow("sample", workdir / "straight", "-n", 5, "-o", out) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == f"error: {out} exists; pass --force to overwrite it"
    assert out.read_bytes() == b"precious"
