"""File I/O shared by the library and the application: checkpoints, HDF5 arrays, JSON/JSONL metrics.

Every writer is atomic (temp file in the same folder, renamed at the end), so a crash or a bad input never leaves
a half-written output; temp files carry their writer's PID, and the next writer of the same file removes those of
dead processes. A failed write (no space left, a read-only or vanished folder) is one :class:`OutputError` that
names the file. Every reader turns a bad file into a one-line :class:`ConfigError`, and reads no more than the
file declares: a checkpoint whose archive declares far more bytes than it holds is refused before any tensor is
read. Files mflow appends to are never followed through symbolic links.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import pickle
import secrets
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .errors import ConfigError, OutputError
from .version import __version__

log = logging.getLogger("mflow")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Remove ``.NAME.<pid>.<random>.tmp`` files beside ``path`` whose writer process is dead; return them."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    if removed:
        log.warning("removed %d temp file(s) left by a killed mflow process beside %s", len(removed), path)
    return removed


def describe_os_error(err: BaseException) -> str:
    """A short reason for a failed write: 'no space left on device', 'read-only file system', ..."""
    code = getattr(err, "errno", None)
    if code is not None:
        return os.strerror(code).lower()
    return str(err).splitlines()[0][:120] if str(err) else type(err).__name__


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn any failure to write ``path`` into one :class:`OutputError` naming it (and its reason)."""
    try:
        yield
    except (ConfigError, OutputError):
        raise
    except OSError as err:
        raise OutputError(f"cannot write {path}: {describe_os_error(err)}") from None
    except RuntimeError as err:  # torch.save reports a full disk as "[enforce fail at inline_container.cc ...]"
        reason = describe_os_error(err)
        with contextlib.suppress(OSError):
            if os.statvfs(Path(path).parent).f_bavail == 0:
                reason = os.strerror(errno.ENOSPC).lower()
        raise OutputError(f"cannot write {path}: {reason}") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The data is flushed to disk before the rename (a power cut leaves the old file or the new one), and
    the file gets the usual permissions (0666 minus the umask). The temp file is removed whatever happens;
    temp files of dead writers of the same file are removed first (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        umask = os.umask(0)
        os.umask(umask)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666 & ~umask))
    try:
        yield tmp
        with writing(path):
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def refuse_overwrite(path: str | Path, force: bool) -> None:
    if os.path.lexists(path) and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")


# --------------------------------------------------------------------------- checkpoints


def versions() -> dict[str, str]:
    return {"mflow": __version__, "torch": str(torch.__version__)}


def save_torch(obj: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp, writing(path):
        torch.save(obj, tmp)


def _check_archive_sizes(path: Path) -> None:
    """Refuse a checkpoint whose zip archive declares far more bytes than the file holds (a compression bomb).

    torch.save writes its archives uncompressed, so the declared sizes add up to about the file's size.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip archive (legacy format or garbage): torch.load decides
    size = path.stat().st_size
    if declared > 2 * size + (1 << 20):
        raise ConfigError(
            f"{path}: refused to load: the archive declares {declared:,} bytes in a file of {size:,} "
            "(a compressed archive; mflow writes uncompressed checkpoints)"
        )


def load_torch(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no code."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path}: unreadable checkpoint (empty file)")
    _check_archive_sizes(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln or "unpickler" in ln.lower()]
        why = lines[0].split(" was not")[0] if lines else "unsupported content"
        raise ConfigError(f"{path}: refused to load: not a plain weights checkpoint ({why[:120]})") from None
    except Exception as err:  # a damaged archive can fail in many ways (EOFError, IndexError, RuntimeError, ...)
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise ConfigError(f"{path}: unreadable checkpoint ({first})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: not an mflow checkpoint")
    return obj


# --------------------------------------------------------------------------- JSON / YAML


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp, writing(path):
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def append_jsonl(record: dict, path: str | Path) -> None:
    """Append one JSON line; a symbolic link at ``path`` is refused, not followed."""
    line = (json.dumps(record, default=_jsonable) + "\n").encode()
    with writing(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ConfigError(f"{path} is a symbolic link; mflow does not write through links") from None
            raise
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


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


def truncate_jsonl(path: str | Path, keep: Callable[[dict], bool] | int) -> None:
    """Keep only the records ``keep`` accepts, or (an int) those up to that step (a resume drops the records
    written after its checkpoint)."""
    accept = keep if callable(keep) else (lambda r: r.get("step", 0) <= keep)
    records = [r for r in read_jsonl(path) if accept(r)]
    with atomic_path(path) as tmp, writing(path):
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
        self.file = None
        try:
            with writing(self.path):
                # no chunk cache: each write reaches the file at once, so a full disk fails at that write (with a
                # cache HDF5 reports it only while evicting, in object destructors, and may crash at close)
                self.file = h5py.File(tmp, "w", rdcc_nbytes=0)
                for name, shape in self.shapes.items():
                    chunk = (min(shape[0], 1024), *shape[1:]) if shape[0] > 0 else None
                    self.file.create_dataset(name, shape=shape, dtype="float32", chunks=chunk)
                for key, value in self.attrs.items():
                    self.file.attrs[key] = value
        except BaseException as err:
            self._close()
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def write(self, start: int, arrays: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Write rows from ``start``; the first failed write raises :class:`OutputError` (nothing more is written)."""
        with writing(self.path):
            for name, arr in arrays.items():
                if isinstance(arr, torch.Tensor):
                    arr = arr.detach().cpu().numpy()
                self.file[name][start : start + len(arr)] = arr

    def _close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(Exception):  # h5py may fail again closing a file on a full disk
                self.file.close()
            self.file = None

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            with writing(self.path):
                self.file.close()
            self.file = None
        self._close()
        self._ctx.__exit__(*exc)


def _h5_link(fh: h5py.File, name: str) -> object:
    """The link object of ``name`` (hard, soft or external), without following it; None if absent."""
    try:
        return fh.get(name, getlink=True)
    except (KeyError, ValueError):
        return None


def open_h5_input(
    path: str | Path, dataset: str | None, sample_shape: tuple[int, ...], allow_external_links: bool = False
) -> tuple[str, int]:
    """Check that ``path`` holds a float dataset of shape (N, *sample_shape), N >= 1; return its name and N.

    Soft links that lead nowhere and external links (to another file, e.g. ``/etc/passwd``) are refused with one
    line; ``allow_external_links`` accepts the latter.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"input file not found: {path}")
    try:
        fh = h5py.File(path, "r")
    except OSError:
        raise ConfigError(f"{path}: not a readable HDF5 file (truncated or another format)") from None
    with fh:
        def datasets() -> list[str]:
            return [k for k in fh if isinstance(_h5_link(fh, k), h5py.HardLink) and isinstance(fh[k], h5py.Dataset)]

        if dataset is None:
            names = datasets()
            if len(names) != 1:
                listed = ", ".join(names) or "none"
                raise ConfigError(f"{path}: pass --dataset NAME (datasets in the file: {listed})")
            dataset = names[0]
        link = _h5_link(fh, dataset)
        if isinstance(link, h5py.ExternalLink) and not allow_external_links:
            raise ConfigError(f"{path}:{dataset}: is an external link (to {link.filename}); refused")
        try:
            target = fh.get(dataset) if link is not None else None
        except (KeyError, OSError, ValueError):
            target = None
        if not isinstance(target, h5py.Dataset):
            listed = ", ".join(datasets()) or "none"
            if link is None:
                raise ConfigError(f"{path}: no dataset '{dataset}' (datasets in the file: {listed})")
            kind = "a link that leads nowhere" if target is None else "not a dataset"
            raise ConfigError(f"{path}: '{dataset}' is {kind} (datasets in the file: {listed})")
        ds = target
        if ds.dtype.kind != "f":
            raise ConfigError(f"{path}:{dataset}: dtype {ds.dtype} is not floating point")
        want = (None, *sample_shape)
        if ds.ndim != len(want) or tuple(ds.shape[1:]) != tuple(sample_shape):
            expect = "(N, " + ", ".join(str(s) for s in sample_shape) + ")"
            raise ConfigError(f"{path}:{dataset}: shape {tuple(ds.shape)} does not match the model's {expect}")
        if ds.shape[0] == 0:
            raise ConfigError(f"{path}:{dataset}: holds 0 rows; nothing to do")
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
