"""Hostile input and failing machines, case by case: every case ends with the right exit code and exactly one line
on stderr (no traceback), writes nothing outside its place, replaces no file without consent and leaves no temp
file behind. In-process where that is the same, real subprocesses for signals, locks and memory."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers import restore_default_signals, tiny_recipe

from mflow_cli import io
from mflow_cli.app import runs
from mflow_cli.app.recipe import validate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny trained run folder, shared read-only by the cases (cases that damage a run copy it first)."""
    root = tmp_path_factory.mktemp("hostile")
    doc = tiny_recipe(train={"epochs": 1, "batch_size": 100})
    return runs.train_run(validate(doc, "tiny.yaml"), root / "run")


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("model.pt", "recipe.yaml", "metrics.jsonl"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _recipe(tmp: Path, doc: dict | str, name: str = "r.yaml") -> Path:
    path = tmp / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def _h5(path: Path, **arrays) -> Path:
    with h5py.File(path, "w") as fh:
        for key, value in arrays.items():
            fh[key] = value
    return path


@dataclass
class Case:
    """One hostile input: ``make(tmp, run) -> argv`` for ``mflow``, what must come out, and what must hold after."""

    name: str
    make: Callable[[Path, Path], list]
    code: int
    says: str
    after: Callable[[Path, Path], None] = field(default=lambda tmp, run: None)


def _nothing_at(*names: str) -> Callable[[Path, Path], None]:
    def check(tmp: Path, run: Path) -> None:
        for name in names:
            assert not (tmp / name).exists(), f"{name} was written"

    return check


def _unchanged(path_of: Callable[[Path, Path], Path], content: bytes) -> Callable[[Path, Path], None]:
    def check(tmp: Path, run: Path) -> None:
        assert path_of(tmp, run).read_bytes() == content

    return check


def _train(tmp: Path, **changes) -> list:
    doc = tiny_recipe(train={"epochs": 1, "batch_size": 100})
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            doc[section][key] = value
        else:
            doc[section] = value
    return ["train", _recipe(tmp, doc), "--out", tmp / "out"]


def _damaged_model(tmp: Path, run: Path, blob_change: Callable[[dict], dict] | None = None, raw: bytes | None = None):
    copy = _copy_run(run, tmp / "damaged")
    if raw is not None:
        (copy / "model.pt").write_bytes(raw)
    else:
        io.save_torch(blob_change(io.load_torch(run / "model.pt")), copy / "model.pt")
    return copy


def _nan_weights(blob: dict) -> dict:
    state = dict(blob["state_dict"])
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    return {**blob, "state_dict": state}


def _fifo(tmp: Path) -> Path:
    path = tmp / "fifo.npy"
    os.mkfifo(path)
    return path


def _soft_dangling(tmp: Path) -> Path:
    path = tmp / "links.h5"
    with h5py.File(path, "w") as fh:
        fh["x"] = np.zeros((5, 2), dtype="float32")
        fh["gone"] = h5py.SoftLink("/nowhere")
    return path


def _external(tmp: Path) -> Path:
    path = tmp / "external.h5"
    with h5py.File(path, "w") as fh:
        fh["x"] = np.zeros((5, 2), dtype="float32")
        fh["outside"] = h5py.ExternalLink("/etc/passwd", "/data")
    return path


ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
"""Nine levels of nine aliases each: 830 bytes that expand to 9^9 values."""

CASES = [
    # run names that would escape runs/
    Case("name is an absolute path", lambda t, r: _train(t, name="/tmp/mflow_escape_abs")[:2], 2,
         "'name' must be a plain name",
         lambda t, r: None if not Path("/tmp/mflow_escape_abs").exists() else pytest.fail("escaped")),
    Case("name climbs out of runs/", lambda t, r: _train(t, name="../../escape")[:2], 2, "'name' must be a plain name"),
    Case("empty name", lambda t, r: _train(t, name="")[:2], 2, "'name' must be a plain name"),
    # recipe documents that are too big, too deep, or ambiguous
    Case("duplicate key", lambda t, r: ["train", _recipe(t, "name: x\ndata: {name: thin_spiral}\nmodel: {kind: dnf}\n"
                                                         "train:\n  epochs: 8\n  epochs: 1\n")],
         2, "duplicate key 'epochs' at lines 5 and 6"),
    Case("second train section", lambda t, r: ["train", _recipe(t, "name: x\ntrain: {epochs: 2}\ndata: {name: "
                                                               "thin_spiral}\ntrain: {lr: 0.1}\n")],
         2, "duplicate key 'train' at lines 2 and 4"),
    Case("nesting 1,000 deep", lambda t, r: ["train", _recipe(t, "seed: " + "[" * 1000 + "]" * 1000 + "\n")],
         2, "nested more than 32 levels"),
    Case("alias bomb", lambda t, r: ["train", _recipe(t, ALIAS_BOMB + "name: *h\n")], 2,
         "expands to more than 100,000 values"),
    Case("10 MB list as seed", lambda t, r: ["train", _recipe(t, "seed: [" + "1," * 5_000_000 + "1]\n")],
         2, "a recipe is at most"),
    # values that pass a type check and would then fail or do nothing
    Case("n_train: -10", lambda t, r: _train(t, data__n_train=-10), 2, "data.n_train"),
    Case("n_train: 0", lambda t, r: _train(t, data__n_train=0), 2, "n_train and n_test must be >= 1"),
    Case("n_test: 0", lambda t, r: _train(t, data__n_test=0), 2, "n_train and n_test must be >= 1"),
    Case("latent_dim: 0", lambda t, r: _train(t, model__latent_dim=0), 2, "latent_dim must be in 1..2"),
    Case("latent_dim larger than the data", lambda t, r: _train(t, model__latent_dim=5), 2,
         "latent_dim must be in 1..2 (the data dimension), got 5"),
    Case("spline_bins: 0", lambda t, r: _train(t, model__spline_bins=0), 2, "spline_bins must be >= 1"),
    Case("seed beyond 64 bits", lambda t, r: _train(t, seed=2**70), 2, "'seed' must be"),
    Case("threads: 100000", lambda t, r: _train(t, threads=100000), 2, "'threads' must be in 1..1024"),
    Case("epochs: 0", lambda t, r: _train(t, train={"epochs": 0}), 2, "trains nothing"),
    Case("noise_std: -1", lambda t, r: _train(t, model__noise_std=-1.0), 2, "noise_std must be >= 0"),
    Case("noise_std: .nan", lambda t, r: _train(t, model__noise_std=float("nan")), 2, "must be a finite number"),
    Case("a FIFO as data.path", lambda t, r: _train(t, data={"name": "array", "path": str(_fifo(t))}), 2, "a FIFO"),
    Case("-n beyond 2^40", lambda t, r: ["sample", r, "-n", "99999999999999999999", "-o", t / "s.h5"], 2, "-n",
         _nothing_at("s.h5")),
    # outputs that would replace an input or a run's own files, or a file without --force
    Case("evaluate -o over an existing file", lambda t, r: (_h5(t / "e.json", x=np.zeros(1)),
                                                           ["evaluate", r, "-o", t / "e.json"])[1],
         2, "pass --force", lambda t, r: h5py.File(t / "e.json").close()),
    Case("evaluate -o RUN/model.pt --force", lambda t, r: ["evaluate", r, "-o", r / "model.pt", "--force"], 2,
         "is also an input", lambda t, r: runs.open_run(r)),
    Case("sample -o RUN/model.pt --force", lambda t, r: ["sample", r, "-n", "5", "-o", r / "model.pt", "--force"], 2,
         "is also an input", lambda t, r: runs.open_run(r)),
    Case("sample -o RUN/metrics.jsonl --force", lambda t, r: ["sample", r, "-n", "5", "-o", r / "metrics.jsonl",
                                                             "--force"], 2, "a file of the run"),
    Case("encode over its own input", lambda t, r: ["encode", r, _h5(t / "in.h5", x=np.zeros((4, 2), "float32")),
                                                    "-o", t / "in.h5", "--force"], 2, "is also an input",
         lambda t, r: np.testing.assert_array_equal(h5py.File(t / "in.h5")["x"][:], np.zeros((4, 2)))),
    # damaged or crafted checkpoints
    Case("0-byte model.pt", lambda t, r: ["sample", _damaged_model(t, r, raw=b""), "-n", "5", "-o", t / "s.h5"], 2,
         "unreadable checkpoint (empty file)", _nothing_at("s.h5")),
    Case("crafted data_shape", lambda t, r: ["sample", _damaged_model(t, r, lambda b: {**b, "data_shape": [-1, 2**40]}),
                                             "-n", "5", "-o", t / "s.h5"], 2, "is not the shape of one sample"),
    Case("crafted data_shape text", lambda t, r: ["sample", _damaged_model(t, r, lambda b: {**b, "data_shape": "ab"}),
                                                  "-n", "5", "-o", t / "s.h5"], 2, "is not the shape of one sample"),
    Case("NaN weights", lambda t, r: ["plot", _damaged_model(t, r, _nan_weights)], 2, "hold NaN or inf",
         lambda t, r: None if not list((t / "damaged").rglob("*.png")) else pytest.fail("plot wrote PNGs")),
    # HDF5 inputs
    Case("dangling soft link", lambda t, r: ["encode", r, _soft_dangling(t), "--dataset", "gone", "-o", t / "z.h5"],
         2, "a link that leads nowhere", _nothing_at("z.h5")),
    Case("external link", lambda t, r: ["encode", r, _external(t), "--dataset", "outside", "-o", t / "z.h5"], 2,
         "is an external link (to /etc/passwd)", _nothing_at("z.h5")),
    Case("0-row input", lambda t, r: ["encode", r, _h5(t / "empty.h5", x=np.zeros((0, 2), "float32")), "-o",
                                      t / "z.h5"], 2, "holds 0 rows", _nothing_at("z.h5")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(case, tmp_path, trained, mflow, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = case.make(tmp_path, trained)
    code = mflow(*argv)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("note:")]
    assert code == case.code, (case.name, err)
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, (case.name, err)
    assert case.says in lines[0], (case.name, lines[0])
    case.after(tmp_path, trained)
    assert not list(tmp_path.rglob(".*.tmp")), "a temp file was left behind"
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_symlinked_metrics_log_is_refused_not_followed(tmp_path, mflow, capsys):
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(target)
    assert mflow(*_train(tmp_path)[:2], "--out", run) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "symbolic link" in err
    assert target.read_text() == "precious\n"


# --------------------------------------------------------------------------- failing filesystems


def test_disk_full_while_sampling_stops_at_the_first_failed_write(tmp_path, trained, mflow, capsys, monkeypatch):
    calls = []

    def full(self, key, value):
        calls.append(1)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    assert mflow("sample", trained, "-n", "50000", "--batch-size", "1000", "-o", tmp_path / "s.h5") == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"error: cannot write {tmp_path / 's.h5'}: no space left on device"]
    assert len(calls) == 1 and not list(tmp_path.iterdir())  # no output, no temp file


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tmp_path, mflow, capsys, monkeypatch):
    save, checkpoints = torch.save, []

    def full_at_the_second_checkpoint(obj, f, *args, **kwargs):
        if ".checkpoint.pt." in str(f):
            checkpoints.append(1)
            if len(checkpoints) == 2:
                save(obj, f, *args, **kwargs)
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_the_second_checkpoint)
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((4096,) * 3 + (0,) * 7))
    doc = tiny_recipe(train={"epochs": 1, "batch_size": 100, "checkpoint_every": 2})
    run = tmp_path / "run"
    assert mflow("train", _recipe(tmp_path, doc), "--out", run) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"error: cannot write {run / 'checkpoint.pt'}: no space left on device"]
    assert io.load_torch(run / "checkpoint.pt")["step"] == 2  # the last good checkpoint
    assert not list(run.glob(".*.tmp")) and not (run / "model.pt").exists()


def test_run_folder_deleted_mid_training(tmp_path, mflow, capsys, monkeypatch):
    import shutil

    original = runs._RunMonitor.epoch_end

    def vanish(self, record):
        shutil.rmtree(self.metrics_path.parent)
        return original(self, record)

    monkeypatch.setattr(runs._RunMonitor, "epoch_end", vanish)
    run = tmp_path / "run"
    assert mflow(*_train(tmp_path)[:2], "--out", run) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write" in err and "no such file or directory" in err
    assert not run.exists()  # not silently recreated without recipe.yaml


def test_stale_temp_files_of_dead_processes_are_removed_by_the_next_writer(tmp_path, trained, mflow, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".s.h5.{int(dead.stdout)}.0bad.tmp"
    stale.write_bytes(b"x" * 1000)
    alive = tmp_path / ".s.h5.1.beef.tmp"  # PID 1 is alive: kept
    alive.write_bytes(b"y")
    assert mflow("sample", trained, "-n", "10", "-o", tmp_path / "s.h5") == 0
    assert not stale.exists() and alive.exists()
    assert "removed 1 temp file(s) left by a killed mflow process" in capsys.readouterr().err


# --------------------------------------------------------------------------- subprocesses: signals, locks, memory


def _mflow_process(*args, env=None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "mflow_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=restore_default_signals, **kwargs)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_an_interrupted_sample_exits_130_with_one_line_and_writes_nothing(tmp_path, trained, sig):
    proc = _mflow_process("sample", trained, "-n", "100000000", "--batch-size", "20000", "-o", tmp_path / "s.h5")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".s.h5.*.tmp")):  # writing has started
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    assert lines == [f"error: interrupted ({sig.name}); unfinished outputs were removed, finished ones and checkpoints "
                     "kept"], err
    assert not list(tmp_path.iterdir())


_SIGNAL_IN_A_WEAKREF_CALLBACK = """
import os, signal, sys, weakref
from mflow_cli import io
from mflow_cli.app import cli

class Thing:
    pass

write, calls = io.H5Writer.write, []

def write_and_be_signalled(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the signal lands inside a callback whose exceptions Python prints and drops
        def callback(ref):
            os.kill(os.getpid(), signal.{sig})
            for _ in range(100000):
                pass
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing
    return write(self, *args, **kwargs)

io.H5Writer.write = write_and_be_signalled
sys.argv = ["mflow", *sys.argv[1:]]
cli.run()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_lost_in_a_housekeeping_callback_still_interrupts(tmp_path, trained, sig):
    """Python drops (and prints) an exception raised inside a weakref or ``__del__`` callback; an interrupt that
    lands there must still stop the command at the next batch, with one line and no output."""
    script = _SIGNAL_IN_A_WEAKREF_CALLBACK.replace("{sig}", sig.name)
    proc = subprocess.run([sys.executable, "-c", script, "sample", str(trained), "-n", "50000", "--batch-size",
                           "10", "-o", str(tmp_path / "s.h5")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=restore_default_signals)
    assert proc.returncode == 130, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("note:")]
    assert lines == [f"error: interrupted ({sig.name}); unfinished outputs were removed, finished ones and "
                     "checkpoints kept"], proc.stderr
    assert not list(tmp_path.iterdir())


def test_a_second_writer_is_refused_until_the_first_dies(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from mflow_cli.app.runs import run_lock\n"
        f"with run_lock(Path({str(run)!r})):\n    print('held', flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    recipe = _recipe(tmp_path, tiny_recipe(train={"epochs": 1, "batch_size": 100}))
    second = _mflow_process("train", recipe, "--out", run)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and err.strip().splitlines() == [
        f"error: {run} is in use by another mflow process (PID {holder.pid}); wait for it to finish or stop it"]
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    third = _mflow_process("train", recipe, "--out", run)  # the kernel released the dead holder's lock
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert (run / "model.pt").exists()


def _peak_rss_mb(*args) -> tuple[int, str, float]:
    """Run ``mflow ARGS`` in a fresh process; return its exit code, stderr and peak RSS in MB."""
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's high-water mark across exec
    code = ("import sys, atexit\n"
            "peak = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "atexit.register(lambda: print('RSS', peak(), file=sys.stderr))\n"
            "from mflow_cli.app.cli import run\nsys.argv = ['mflow', *sys.argv[1:]]\nrun()\n")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    rss = next(float(line.split()[1]) / 1024 for line in proc.stderr.splitlines() if line.startswith("RSS"))
    err = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("RSS"))
    return proc.returncode, err, rss


def test_a_compression_bomb_checkpoint_is_refused_with_bounded_memory(tmp_path, trained):
    bomb = _copy_run(trained, tmp_path / "bomb")
    blob = io.load_torch(trained / "model.pt")
    blob["state_dict"] = {**blob["state_dict"], "huge": torch.zeros(2**27)}  # 512 MiB of zeros
    torch.save(blob, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(bomb / "model.pt", "w",
                                                                       zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    (tmp_path / "plain.pt").unlink()
    assert (bomb / "model.pt").stat().st_size < 20 * 2**20
    code, err, rss = _peak_rss_mb("sample", bomb, "-n", "5", "-o", tmp_path / "s.h5")
    assert code == 2 and "refused to load: the archive declares" in err and len(err.strip().splitlines()) == 1
    assert rss < 700, f"peak RSS {rss:.0f} MB"  # torch alone is ~300 MB; reading the tensor would add 512 MiB


def test_an_alias_bomb_recipe_is_refused_fast_with_bounded_memory(tmp_path):
    rest = "name: x\ndata: {name: thin_spiral}\nmodel: {kind: dnf}\nevaluate: {seed: *i}\n"
    path = _recipe(tmp_path, ALIAS_BOMB + rest)
    assert path.stat().st_size < 1000
    start = time.monotonic()
    code, err, rss = _peak_rss_mb("train", path)
    assert code == 2 and "expands to more than 100,000 values" in err
    assert time.monotonic() - start < 60 and rss < 700, f"peak RSS {rss:.0f} MB"


@pytest.fixture
def small_filesystem(tmp_path):
    """A 150 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_filesystem(small_filesystem, tmp_path, trained, mflow, capsys):
    """On a real full disk: sampling stops at the first failed write with one line (HDF5 writes without a chunk
    cache, so the error surfaces there and not in a destructor or a crash), and training keeps its last checkpoint."""
    out = small_filesystem / "s.h5"
    assert mflow("sample", trained, "-n", "2000000", "--batch-size", "50000", "-o", out) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: cannot write {out}: no space left on device"
    assert not list(small_filesystem.iterdir())
    run = small_filesystem / "run"
    doc = tiny_recipe(train={"epochs": 3, "batch_size": 100, "checkpoint_every": 2})
    assert mflow("train", _recipe(tmp_path, doc), "--out", run) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: cannot write {run / 'checkpoint.pt'}: no space left on device")
    assert io.load_torch(run / "checkpoint.pt")["step"] >= 2 and not list(run.glob(".*.tmp"))
