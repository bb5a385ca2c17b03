"""File I/O shared by the library and the application: checkpoints, HDF5 arrays, JSON/JSONL metrics.

Every writer is atomic (temp file in the same folder, renamed at the end), so a crash or a bad input
never leaves a half-written output. Every reader turns a bad file into a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from . import __version__
from .errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The data is flushed to disk before the rename (a power cut leaves the old file or the new one), and
    the file gets the usual permissions (0666 minus the umask) rather than mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def refuse_overwrite(path: str | Path, force: bool) -> None:
    if Path(path).exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")


# --------------------------------------------------------------------------- checkpoints


def versions() -> dict[str, str]:
    return {"mflow": __version__, "torch": str(torch.__version__)}


def save_torch(obj: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no code."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln or "unpickler" in ln.lower()]
        why = lines[0].split(" was not")[0] if lines else "unsupported content"
        raise ConfigError(f"{path}: refused to load: not a plain weights checkpoint ({why[:120]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: not an mflow checkpoint")
    return obj


# --------------------------------------------------------------------------- JSON / YAML


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def append_jsonl(record: dict, path: str | Path) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=_jsonable) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (the process was killed while appending) is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ConfigError(f"{path}: line {i + 1} is not JSON") from None
    return records


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop records past ``max_step`` (written after the checkpoint a resume starts from)."""
    records = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- HDF5


class H5Writer:
    """Write named arrays of known final shape batch by batch into a temp file, renamed on close."""

    def __init__(self, path: str | Path, shapes: dict[str, tuple[int, ...]], attrs: dict[str, Any]):
        self.path = Path(path)
        self.shapes = shapes
        self.attrs = attrs

    def __enter__(self) -> H5Writer:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self.file = h5py.File(tmp, "w")
        for name, shape in self.shapes.items():
            chunk = (min(shape[0], 1024), *shape[1:]) if shape[0] > 0 else None
            self.file.create_dataset(name, shape=shape, dtype="float32", chunks=chunk)
        for key, value in self.attrs.items():
            self.file.attrs[key] = value
        return self

    def write(self, start: int, arrays: dict[str, torch.Tensor | np.ndarray]) -> None:
        for name, arr in arrays.items():
            if isinstance(arr, torch.Tensor):
                arr = arr.detach().cpu().numpy()
            self.file[name][start : start + len(arr)] = arr

    def __exit__(self, *exc) -> None:
        self.file.close()
        self._ctx.__exit__(*exc)


def open_h5_input(path: str | Path, dataset: str | None, sample_shape: tuple[int, ...]) -> tuple[str, int]:
    """Check that ``path`` holds a float dataset of shape (N, *sample_shape); return its name and N."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"input file not found: {path}")
    try:
        fh = h5py.File(path, "r")
    except OSError:
        raise ConfigError(f"{path}: not a readable HDF5 file (truncated or another format)") from None
    with fh:
        if dataset is None:
            names = [k for k, v in fh.items() if isinstance(v, h5py.Dataset)]
            if len(names) != 1:
                listed = ", ".join(names) or "none"
                raise ConfigError(f"{path}: pass --dataset NAME (datasets in the file: {listed})")
            dataset = names[0]
        if dataset not in fh or not isinstance(fh[dataset], h5py.Dataset):
            listed = ", ".join(k for k, v in fh.items() if isinstance(v, h5py.Dataset)) or "none"
            raise ConfigError(f"{path}: no dataset '{dataset}' (datasets in the file: {listed})")
        ds = fh[dataset]
        if ds.dtype.kind != "f":
            raise ConfigError(f"{path}:{dataset}: dtype {ds.dtype} is not floating point")
        want = (None, *sample_shape)
        if ds.ndim != len(want) or tuple(ds.shape[1:]) != tuple(sample_shape):
            expect = "(N, " + ", ".join(str(s) for s in sample_shape) + ")"
            raise ConfigError(f"{path}:{dataset}: shape {tuple(ds.shape)} does not match the model's {expect}")
        return dataset, int(ds.shape[0])


def iter_h5_batches(path: str | Path, dataset: str, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Stream (start, batch) float32 tensors; NaN/inf or a truncated file raise :class:`ConfigError`."""
    with h5py.File(path, "r") as fh:
        ds = fh[dataset]
        for start in range(0, ds.shape[0], batch_size):
            try:
                arr = np.asarray(ds[start : start + batch_size], dtype=np.float32)
            except (OSError, RuntimeError):
                raise ConfigError(f"{path}:{dataset}: rows from {start} cannot be read (truncated file?)") from None
            bad = ~np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
            if bad.any():
                raise ConfigError(f"{path}:{dataset}: row {start + int(np.argmax(bad))} holds NaN or inf")
            yield start, torch.from_numpy(arr)
