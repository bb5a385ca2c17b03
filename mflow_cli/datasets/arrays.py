"""Your own data: an (N, D) table of floats from HDF5, NumPy (``.npy``/``.npz``) or CSV/TSV.

:class:`ArrayDataset` reads the table, checks it (finite, numeric, two-dimensional) before any training,
splits it into seeded, disjoint train and test rows, and standardizes every feature with the mean and
standard deviation of the training rows. The model therefore sees data in *model units*;
:class:`Standardization` converts points and densities back to the file's units.

Files larger than ``stream_threshold_mb`` are never loaded whole: the training rows are read in batches
(:class:`StreamedBatches`, a :class:`~mflow_cli.training.BatchSource`) straight from the file, HDF5 in
contiguous chunk-aligned blocks, ``.npy`` through a memory map. The mean and standard deviation then come
from one streaming pass, which also checks every row.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import stat
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
import torch

from ..errors import ConfigError
from ..training import BatchSource, TensorBatches
from .base import Dataset, TableData

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None, ".dat": None}
STREAM_BLOCK_BYTES = 1 << 20
"""Target size of one contiguous read when streaming (rounded to whole HDF5 chunks)."""
STREAM_WINDOW_BLOCKS = 16
CHUNK_ROWS = 1 << 16
"""Rows checked or standardized at a time when a table is loaded whole."""
"""Blocks shuffled together: rows are permuted within a window of this many randomly chosen blocks."""


class Standardization:
    r"""The affine map from the file's units to the model's, y = (x − mean) / std per feature.

    Densities change by the Jacobian of the map: for a model density p_Y in model units,
    log p_X(x) = log p_Y(y) + :attr:`log_abs_det_to_model`, with log |det ∂y/∂x| = −Σ_i log std_i.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ConfigError(f"standardization: mean {tuple(self.mean.shape)} and std {tuple(self.std.shape)} differ")
        if not (torch.isfinite(self.std).all() and (self.std > 0).all() and torch.isfinite(self.mean).all()):
            raise ConfigError("standardization: mean must be finite and std finite and > 0")

    @classmethod
    def identity(cls, dim: int) -> Standardization:
        return cls(torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64))

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Standardization:
        """Rebuild from :meth:`state` (e.g. read back from a checkpoint)."""
        return cls(state["mean"], state["std"])

    def state(self) -> dict[str, torch.Tensor]:
        """``{"mean": (D,), "std": (D,)}`` float64 tensors, for a checkpoint."""
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """File units -> model units, in ``x``'s dtype and device."""
        return (x - self.mean.to(x)) / self.std.to(x)

    def to_original(self, y: torch.Tensor) -> torch.Tensor:
        """Model units -> file units (samples, reconstructions, projections)."""
        return y * self.std.to(y) + self.mean.to(y)

    @property
    def log_abs_det_to_model(self) -> float:
        """log |det ∂y/∂x| = −Σ log std: add it to a model-space log density to get it in file units."""
        return float(-torch.log(self.std).sum())

    def log_prob_to_original(self, log_prob_model: torch.Tensor) -> torch.Tensor:
        """log p_X(x) from log p_Y(y) at y = :meth:`to_model` (x)."""
        return log_prob_model + self.log_abs_det_to_model


class _Moments:
    """Per-feature count, mean and sum of squared deviations, merged chunk by chunk (Chan et al. 1979)."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def add(self, chunk: np.ndarray) -> None:
        n = len(chunk)
        if n == 0:
            return
        mean = chunk.mean(axis=0)
        m2 = ((chunk - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def standardization(self) -> Standardization:
        """Population std; a constant feature keeps std 1 (it is only shifted)."""
        std = np.sqrt(self.m2 / max(self.count, 1))
        return Standardization(torch.from_numpy(self.mean), torch.from_numpy(np.where(std > 0, std, 1.0)))


class _NonFinite:
    """Counts rows with NaN/inf and remembers the first, across chunks."""

    def __init__(self) -> None:
        self.rows = 0
        self.first: int | None = None

    def add(self, chunk: np.ndarray, row_numbers: np.ndarray) -> None:
        bad = ~np.isfinite(chunk).all(axis=1)
        if bad.any():
            self.rows += int(bad.sum())
            first = int(row_numbers[bad].min())
            self.first = first if self.first is None else min(self.first, first)

    def merge(self, other: _NonFinite) -> None:
        self.rows += other.rows
        if other.first is not None:
            self.first = other.first if self.first is None else min(self.first, other.first)

    def check(self, path: Path) -> None:
        if self.rows:
            raise ConfigError(
                f"{path}: {self.rows} rows hold non-finite values (NaN or inf), the first is row {self.first} "
                "(counting data rows from 0); remove or impute them"
            )


# --------------------------------------------------------------------------- readers


class _Table:
    """A 2-D numeric table in a file: ``n_rows`` × ``n_cols`` (after column selection), read by row ranges."""

    path: Path
    n_rows: int
    n_cols: int
    names: list[str]
    nbytes: int  # the stored array's size, uncompressed
    chunk_rows = 1  # rows of the file's own storage unit (HDF5 chunk)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float64 (rows, n_cols)."""
        raise NotImplementedError


class _ArrayTable(_Table):
    """A table held in memory (CSV/TSV and .npz members, or a small .npy/HDF5 array loaded whole)."""

    def __init__(self, path: Path, array: np.ndarray, names: list[str]) -> None:
        self.path, self.array, self.names = path, array, names
        self.n_rows, self.n_cols = array.shape
        self.nbytes = array.nbytes

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop], dtype=np.float64)

    def rows(self, index: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[index], dtype=np.float64)


class _StoredTable(_Table):
    """A memory-mapped ``.npy`` array or an HDF5 dataset: rows are read from the file when needed."""

    def __init__(self, path: Path, stored, columns: list[int] | None, chunk_rows: int = 1) -> None:
        self.path, self.stored, self.columns, self.chunk_rows = path, stored, columns, chunk_rows
        self.n_rows, total_cols = stored.shape
        self.n_cols = total_cols if columns is None else len(columns)
        self.names = [str(i) for i in (range(total_cols) if columns is None else columns)]
        self.nbytes = self.n_rows * total_cols * stored.dtype.itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        rows = np.asarray(self.stored[start:stop], dtype=np.float64)
        return rows if self.columns is None else rows[:, self.columns]

    def in_memory(self) -> _ArrayTable:
        """The whole table read into memory (in its stored dtype)."""
        array = np.array(self.stored[0 : self.n_rows])
        return _ArrayTable(self.path, array if self.columns is None else array[:, self.columns], self.names)


def _check_regular_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ConfigError(f"{path}: is {kind}; give a regular HDF5, .npy, .npz, CSV or TSV file")


def _check_array(path: Path, where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) == 1:
        raise ConfigError(f"{path}: {where} is 1-D {shape}; expected a 2-D table (rows, features): reshape to (N, 1)")
    if len(shape) != 2:
        raise ConfigError(f"{path}: {where} has shape {shape}; expected a 2-D table (rows, features): flatten each row")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_):
        raise ConfigError(f"{path}: {where} holds {dtype} values, not real numbers")
    if shape[0] == 0 or shape[1] == 0:
        raise ConfigError(f"{path}: {where} is empty, shape {shape}")


def _integer_columns(path: Path, columns: Sequence[int | str] | None, n_cols: int) -> list[int] | None:
    if columns is None:
        return None
    names = [c for c in columns if not isinstance(c, int)]
    if names:
        raise ConfigError(f"columns: names ({', '.join(map(str, names))}) need a CSV/TSV file with a header row")
    bad = [c for c in columns if not -n_cols <= c < n_cols]
    if bad:
        raise ConfigError(f"columns: {bad} out of range for {path} with {n_cols} columns")
    return [c % n_cols for c in columns]


def _open_npy(path: Path, columns) -> _StoredTable:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ConfigError(f"{path}: unreadable .npy file ({str(err).splitlines()[0][:100]})") from None
    _check_array(path, "the array", array.shape, array.dtype)
    return _StoredTable(path, array, _integer_columns(path, columns, array.shape[1]))


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each ``.npz`` member, read from the member headers without loading the arrays."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = npy_format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = npy_format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = npy_format.read_array_header_2_0(member)
            headers[info.filename.removesuffix(".npy")] = (shape, dtype)
    return headers


def _open_npz(path: Path, key: str | None, columns, threshold_bytes: float) -> _ArrayTable:
    try:
        headers = _npz_headers(path)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{path}: unreadable .npz file ({str(err).splitlines()[0][:100]})") from None
    listing = ", ".join(f"{name} {shape}" for name, (shape, _) in headers.items()) or "nothing"
    if key is None:
        two_d = [name for name, (shape, _) in headers.items() if len(shape) == 2]
        if len(two_d) != 1:
            raise ConfigError(f"{path}: holds {len(two_d)} 2-D arrays ({listing}); name one with key")
        key = two_d[0]
    elif key not in headers:
        raise ConfigError(f"key: {path} has no array {key!r}; it holds {listing}")
    shape, dtype = headers[key]
    _check_array(path, f"array {key!r}", shape, dtype)
    if math.prod(shape) * dtype.itemsize > threshold_bytes:
        raise ConfigError(
            f"{path}: array {key!r} is {math.prod(shape) * dtype.itemsize / 2**20:.0f} MB, over "
            "stream_threshold_mb, and .npz members cannot be read in batches: save it as .npy (numpy.save) or HDF5"
        )
    with np.load(path, allow_pickle=False) as archive:
        array = archive[key]
    cols = _integer_columns(path, columns, shape[1])
    names = [str(i) for i in (range(shape[1]) if cols is None else cols)]
    return _ArrayTable(path, array if cols is None else array[:, cols], names)


def _open_hdf5(path: Path, key: str | None, columns) -> _StoredTable:
    import h5py

    try:
        file = h5py.File(path, "r")
    except OSError as err:
        raise ConfigError(f"{path}: unreadable HDF5 file ({str(err).splitlines()[0][:100]})") from None
    found: dict[str, h5py.Dataset] = {}

    def collect(name: str, obj) -> None:  # visititems stops at the first callback that returns a value
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    file.visititems(collect)
    listing = ", ".join(f"{name} {d.shape}" for name, d in found.items()) or "no datasets"
    if key is None:
        two_d = [name for name, d in found.items() if d.ndim == 2]
        if len(two_d) != 1:
            raise ConfigError(f"{path}: holds {len(two_d)} 2-D datasets ({listing}); name one with key")
        key = two_d[0]
    elif key.strip("/") not in found:
        raise ConfigError(f"key: {path} has no dataset {key!r}; it holds {listing}")
    dataset = found[key.strip("/")]
    _check_array(path, f"dataset {key!r}", dataset.shape, dataset.dtype)
    chunk_rows = dataset.chunks[0] if dataset.chunks else 1
    return _StoredTable(path, dataset, _integer_columns(path, columns, dataset.shape[1]), chunk_rows)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text_rows(path: Path, delimiter: str | None) -> Iterator[list[str]]:
    """Fields of each non-blank, non-comment line (``#`` starts a comment line, as for numpy.loadtxt)."""
    with open(path, newline="") as handle:
        lines = (line for line in handle if line.strip() and not line.lstrip().startswith("#"))
        if delimiter is None:
            yield from (line.split() for line in lines)
        else:
            yield from csv.reader(lines, delimiter=delimiter)


def _open_text(path: Path, columns: Sequence[int | str] | None, threshold_bytes: float) -> _ArrayTable:
    size = path.stat().st_size
    if size > threshold_bytes:
        raise ConfigError(
            f"{path}: is {size / 2**20:.0f} MB, over stream_threshold_mb, and text files are not read in batches: "
            "convert it to .npy (numpy.save) or HDF5"
        )
    delimiter = TEXT_SUFFIXES[path.suffix.lower()]
    if delimiter is None:
        with open(path, newline="") as handle:
            sample = handle.read(1 << 16)
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = None  # whitespace-separated
    first = next(_text_rows(path, delimiter), None)
    if first is None:
        raise ConfigError(f"{path}: holds no data rows")
    header = None if all(_is_number(field) for field in first) else [field.strip() for field in first]
    n_cols = len(first)
    if columns is None:
        usecols = list(range(n_cols))
    else:
        usecols = []
        for column in columns:
            if isinstance(column, int):
                if not -n_cols <= column < n_cols:
                    raise ConfigError(f"columns: {column} out of range for {path} with {n_cols} columns")
                usecols.append(column % n_cols)
            elif header is None:
                raise ConfigError(f"columns: {path} has no header row, so select columns by index, not {column!r}")
            elif header.count(column) != 1:
                found = "appears twice in" if column in header else "is not in"
                raise ConfigError(f"columns: {column!r} {found} the header of {path} ({', '.join(header)})")
            else:
                usecols.append(header.index(column))
    names = [header[c] if header else str(c) for c in usecols]
    try:
        array = _loadtxt(path, delimiter, header is not None, usecols)
    except ValueError:
        raise ConfigError(_describe_bad_text(path, delimiter, header is not None, usecols, names)) from None
    if array.shape[0] == 0:
        raise ConfigError(f"{path}: holds no data rows")
    return _ArrayTable(path, array, names)


def _loadtxt(path: Path, delimiter: str | None, has_header: bool, usecols: list[int]) -> np.ndarray:
    with open(path, newline="") as handle:
        lines = (line for line in handle if line.strip() and not line.lstrip().startswith("#"))
        if has_header:
            next(lines)
        return np.loadtxt(lines, delimiter=delimiter, usecols=usecols, dtype=np.float64, ndmin=2, quotechar='"')


def _describe_bad_text(path: Path, delimiter: str | None, has_header: bool, usecols: list[int], names) -> str:
    """Why numpy.loadtxt refused the file: name the non-numeric columns, or the first ragged row."""
    rows = _text_rows(path, delimiter)
    first = next(rows)
    bad: dict[int, tuple[int, str]] = {}  # column -> (first bad data row, its value)
    for index, fields in enumerate(rows if has_header else itertools.chain([first], rows)):
        if len(fields) != len(first):
            return f"{path}: data row {index} has {len(fields)} fields, the first row has {len(first)}"
        for c in usecols:
            if c not in bad and not _is_number(fields[c]):
                bad[c] = (index, fields[c])
    if not bad:
        return f"{path}: not a numeric table that numpy.loadtxt can read"
    named = ", ".join(repr(names[usecols.index(c)]) if has_header else str(c) for c in sorted(bad))
    row, value = bad[min(bad)]
    return (
        f"{path}: non-numeric column{'s' if len(bad) > 1 else ''} {named} (e.g. {value!r} in data row {row}); "
        "select the numeric ones with columns"
    )


def _open_table(path: Path, key: str | None, columns, threshold_bytes: float) -> _Table:
    _check_regular_file(path)
    suffix = path.suffix.lower()
    if key is not None and suffix not in (*HDF5_SUFFIXES, ".npz"):
        raise ConfigError(f"key: only HDF5 and .npz files hold named arrays, {path} is a {suffix or 'plain'} file")
    if suffix == ".npy":
        return _open_npy(path, columns)
    if suffix == ".npz":
        return _open_npz(path, key, columns, threshold_bytes)
    if suffix in HDF5_SUFFIXES:
        return _open_hdf5(path, key, columns)
    if suffix in TEXT_SUFFIXES:
        return _open_text(path, columns, threshold_bytes)
    known = ", ".join([*HDF5_SUFFIXES, ".npy", ".npz", *TEXT_SUFFIXES])
    raise ConfigError(f"{path}: unknown file type {suffix or '(no suffix)'}; expected one of {known}")


# --------------------------------------------------------------------------- splits


def _block_ranges(blocks: np.ndarray, block_rows: int, n_rows: int, cap: int | None) -> np.ndarray:
    """Row ranges (K, 2) of ``blocks`` taken in the given order until ``cap`` rows; sorted and merged."""
    starts = blocks.astype(np.int64) * block_rows
    stops = np.minimum(starts + block_rows, n_rows)
    if cap is not None:
        total = np.cumsum(stops - starts)
        keep = min(int(np.searchsorted(total, cap)) + 1, len(blocks))
        starts, stops = starts[:keep], stops[:keep].copy()
        stops[-1] -= max(int(total[keep - 1]) - cap, 0)
    order = np.argsort(starts, kind="stable")
    starts, stops = starts[order], stops[order]
    new = np.ones(len(starts), dtype=bool)
    new[1:] = starts[1:] != stops[:-1]
    last = np.append(new[1:], True)
    return np.stack([starts[new], stops[last]], axis=1)


def range_rows(ranges: np.ndarray) -> np.ndarray:
    """All row indices of the ranges (K, 2), in order."""
    lengths = ranges[:, 1] - ranges[:, 0]
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(ranges[:, 0] - offsets, lengths) + np.arange(int(lengths.sum()))


def _block_pieces(ranges: np.ndarray, block_rows: int) -> np.ndarray:
    """The ranges cut at multiples of ``block_rows``: pieces (K, 2) that each lie within one block."""
    pieces = []
    for start, stop in ranges.tolist():
        cuts = np.arange((start // block_rows + 1) * block_rows, stop, block_rows)
        edges = np.concatenate([[start], cuts, [stop]])
        pieces.append(np.stack([edges[:-1], edges[1:]], axis=1))
    return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros((0, 2), dtype=np.int64)


def _stream_block_rows(table: _Table) -> int:
    """Rows per streamed read: about :data:`STREAM_BLOCK_BYTES`, in whole HDF5 chunks."""
    row_bytes = max(table.nbytes // max(table.n_rows, 1), 1)
    chunks = max(1, round(STREAM_BLOCK_BYTES / (table.chunk_rows * row_bytes)))
    return table.chunk_rows * chunks


def _read_ranges(table: _Table, ranges: np.ndarray) -> np.ndarray:
    if isinstance(table, _ArrayTable):
        return table.rows(range_rows(ranges))
    parts = [table.read(start, stop) for start, stop in ranges.tolist()]
    return np.concatenate(parts) if parts else np.zeros((0, table.n_cols))


def _scan_rows(table: _Table, ranges: np.ndarray, block_rows: int, moments: _Moments | None = None) -> _NonFinite:
    """Non-finite rows among ``ranges`` (by file row number), adding the rows to ``moments``; block by block
    when the table is read from the file."""
    non_finite = _NonFinite()
    if isinstance(table, _ArrayTable):  # in chunks: float64 copies of a whole large table would not fit
        rows = range_rows(ranges)
        pieces = ((table.rows(part), part) for part in np.array_split(rows, max(1, len(rows) // CHUNK_ROWS)))
    else:
        pieces = ((table.read(a, b), np.arange(a, b)) for a, b in _block_pieces(ranges, block_rows).tolist())
    for chunk, row_numbers in pieces:
        non_finite.add(chunk, row_numbers)
        if moments is not None and not non_finite.rows:
            moments.add(chunk)
    return non_finite


class StreamedBatches(BatchSource):
    """Training batches read from the file: shuffled blocks, rows shuffled within windows of blocks.

    Each epoch permutes the blocks (contiguous row ranges of about :data:`STREAM_BLOCK_BYTES`, aligned
    to HDF5 chunks, so each is one cheap read), groups consecutive ones into windows of
    ``window_blocks``, and permutes the rows of each window; the concatenated rows are cut into batches.
    So every training row comes exactly once per epoch, and the order depends only on the loop's
    per-epoch ``generator``. Each window's row permutation has its own seed drawn up front, so a
    resumed epoch skips to batch ``start`` without reading the windows before it.
    """

    def __init__(
        self,
        table: _Table,
        pieces: np.ndarray,
        standardization: Standardization,
        window_blocks: int,
    ) -> None:
        self.table, self.pieces, self.standardization = table, pieces, standardization
        self.window_blocks = window_blocks
        self.n_rows = int((pieces[:, 1] - pieces[:, 0]).sum())

    def __len__(self) -> int:
        return self.n_rows

    def batches(self, batch_size: int, generator: torch.Generator, start: int = 0) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self.pieces), generator=generator).numpy()
        windows = [order[i : i + self.window_blocks] for i in range(0, len(order), self.window_blocks)]
        seeds = torch.randint(0, 2**62, (len(windows),), generator=generator).tolist()
        skip = start * batch_size  # rows of the epoch before batch ``start``
        buffer, used = torch.zeros(0, self.table.n_cols), 0
        for window, seed in zip(windows, seeds, strict=True):
            rows = int((self.pieces[window, 1] - self.pieces[window, 0]).sum())
            if skip >= rows:
                skip -= rows
                continue
            x = torch.from_numpy(_read_ranges(self.table, self.pieces[window]))
            x = x[torch.randperm(rows, generator=torch.Generator().manual_seed(seed))][skip:]
            skip = 0
            buffer, used = torch.cat([buffer[used:], self.standardization.to_model(x).float()]), 0
            while len(buffer) - used >= batch_size:
                yield buffer[used : used + batch_size]
                used += batch_size
        if used < len(buffer):
            yield buffer[used:]


# --------------------------------------------------------------------------- the dataset


class ArrayDataset(Dataset, TableData):
    r"""Your own (N, D) table of floats from an HDF5, ``.npy``, ``.npz``, CSV or TSV file.

    The rows are split into disjoint train and test sets by a seeded permutation (of rows, or of
    blocks of rows when the file is streamed); :meth:`split_ranges` and :meth:`split_info` record
    which rows went where. Every value is checked before training (finite, numeric; the table
    two-dimensional): bad data raise :class:`~mflow_cli.errors.ConfigError` naming the file and the
    problem. With ``standardize`` the model sees each feature shifted and scaled by the training rows'
    mean and standard deviation; :attr:`standardization` maps points and densities back.

    Arguments:
        path: The data file: ``.h5``/``.hdf5`` (HDF5), ``.npy``, ``.npz``, ``.csv``, ``.tsv``, or
            ``.txt``/``.dat`` (delimiter detected). One row per example, one column per feature.
        key: The HDF5 dataset (a path such as ``group/data`` is fine) or ``.npz`` member; by default
            the only 2-D one in the file.
        columns: The columns to use, as names from the header row (CSV/TSV) or integer indices
            (any format); by default all. A header row is detected: the first row is a header when
            any of its fields is not a number.
        test_fraction: The fraction of rows held out for testing (default 0.1); not with ``test_path``.
        test_path: A separate test file (same format rules, ``key`` and ``columns``) instead of
            holding out ``test_fraction`` of ``path``.
        n_train: Use at most this many training rows (a random subset, of whole blocks of rows
            when the file is streamed); null for all.
        n_test: Use at most this many test rows (a random subset, as for ``n_train``); null for all.
        seed: Seed of the train/test split and of the subsets.
        standardize: Shift and scale each feature to mean 0 and standard deviation 1 over the
            training rows (a constant feature is only shifted).
        stream_threshold_mb: Files whose array is larger than this many MB (uncompressed) are never
            loaded whole: training reads batches from the file (HDF5 or ``.npy`` only) and the test
            rows are loaded alone.
    """

    def __init__(
        self,
        path: str,
        key: str | None = None,
        columns: list[str | int] | None = None,
        test_fraction: float | None = None,
        test_path: str | None = None,
        n_train: int | None = None,
        n_test: int | None = None,
        seed: int = 0,
        standardize: bool = True,
        stream_threshold_mb: float = 1024.0,
    ) -> None:
        if test_fraction is not None and test_path is not None:
            raise ConfigError("test_fraction and test_path exclude each other: give one")
        self.test_fraction = 0.1 if test_fraction is None else test_fraction
        if test_path is None and not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name, value in (("n_train", n_train), ("n_test", n_test)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 (or null for all rows), got {value}")
        if not stream_threshold_mb >= 0:
            raise ConfigError(f"stream_threshold_mb must be >= 0, got {stream_threshold_mb}")
        if columns is not None and len(columns) == 0:
            raise ConfigError("columns must name at least one column (or be null for all)")
        self.path, self.key, self.columns = Path(path), key, columns
        self.test_path = None if test_path is None else Path(test_path)
        self.n_train, self.n_test, self.seed = n_train, n_test, seed
        self.standardize, self.stream_threshold_mb = standardize, stream_threshold_mb
        threshold = stream_threshold_mb * 2**20
        self._table = self._stream_or_load(_open_table(self.path, key, columns, threshold), threshold)
        self._test_table = self._table
        if self.test_path is not None:
            test_table = _open_table(self.test_path, key, columns, threshold)
            self._test_table = self._stream_or_load(test_table, threshold)
            if self._test_table.n_cols != self._table.n_cols:
                raise ConfigError(
                    f"test_path: {self.test_path} has {self._test_table.n_cols} columns, {self.path} has "
                    f"{self._table.n_cols}"
                )
        self.data_shape = (self._table.n_cols,)
        self.streams = isinstance(self._table, _StoredTable)
        self._split()
        self._standardization: Standardization | None = None
        self._cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def _stream_or_load(table: _Table, threshold_bytes: float) -> _Table:
        if isinstance(table, _StoredTable) and table.nbytes <= threshold_bytes:
            return table.in_memory()
        return table

    @property
    def feature_names(self) -> list[str]:
        """Header names of the columns used (CSV/TSV with a header), else their indices as strings."""
        return list(self._table.names)

    # ------------------------------------------------------------------ split
    def _split(self) -> None:
        table = self._table
        self.block_rows = _stream_block_rows(table) if self.streams else 1
        n_blocks = math.ceil(table.n_rows / self.block_rows)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(n_blocks)
        if self.test_path is None:
            n_test_blocks = max(1, round(self.test_fraction * n_blocks))
            if n_test_blocks >= n_blocks:
                raise ConfigError(
                    f"{self.path}: {table.n_rows} rows in {n_blocks} blocks of {self.block_rows} are too few "
                    f"to hold out test_fraction={self.test_fraction} and keep training rows"
                )
            self.test_ranges = _block_ranges(order[:n_test_blocks], self.block_rows, table.n_rows, self.n_test)
            order = order[n_test_blocks:]
        else:
            test = self._test_table
            self.test_block_rows = _stream_block_rows(test) if isinstance(test, _StoredTable) else 1
            test_order = rng.permutation(math.ceil(test.n_rows / self.test_block_rows))
            self.test_ranges = _block_ranges(test_order, self.test_block_rows, test.n_rows, self.n_test)
        self.train_ranges = _block_ranges(order, self.block_rows, table.n_rows, self.n_train)

    def split_ranges(self) -> dict[str, np.ndarray]:
        """The split as sorted, disjoint row ranges ``[start, stop)`` (K, 2) of ``path`` (and ``test_path``)."""
        return {"train": self.train_ranges.copy(), "test": self.test_ranges.copy()}

    def split_info(self) -> dict:
        """A record of the split for the run folder: row counts, seed and fingerprints of the row ranges."""

        def digest(ranges: np.ndarray) -> str:
            return hashlib.sha256(np.ascontiguousarray(ranges, dtype="<i8").tobytes()).hexdigest()[:16]

        return {
            "path": str(self.path),
            "test_path": None if self.test_path is None else str(self.test_path),
            "rows": self._table.n_rows,
            "train_rows": self.n_train_rows,
            "test_rows": int((self.test_ranges[:, 1] - self.test_ranges[:, 0]).sum()),
            "block_rows": self.block_rows,
            "seed": self.seed,
            "streamed": self.streams,
            "train_ranges_sha256": digest(self.train_ranges),
            "test_ranges_sha256": digest(self.test_ranges),
        }

    @property
    def n_train_rows(self) -> int:
        return int((self.train_ranges[:, 1] - self.train_ranges[:, 0]).sum())

    def check_rows(self, batch_size: int) -> None:
        """Raise :class:`ConfigError` when the training split has fewer rows than one batch."""
        if self.n_train_rows < batch_size:
            raise ConfigError(
                f"{self.path}: the training split has {self.n_train_rows} rows, fewer than batch_size={batch_size}"
            )

    # ------------------------------------------------------------------ checks and units
    def _scan(self) -> None:
        """One pass over the rows in use: all must be finite; the training rows give the moments."""
        moments = _Moments(self._table.n_cols) if self.standardize else None
        train = _scan_rows(self._table, self.train_ranges, self.block_rows, moments)
        if self.test_path is None:
            train.merge(_scan_rows(self._table, self.test_ranges, self.block_rows))
        train.check(self.path)
        if self.test_path is not None:
            _scan_rows(self._test_table, self.test_ranges, self.test_block_rows).check(self.test_path)
        dim = self._table.n_cols
        self._standardization = Standardization.identity(dim) if moments is None else moments.standardization()

    @property
    def standardization(self) -> Standardization:
        """The map from file units to model units (the identity without ``standardize``)."""
        if self._standardization is None:
            self._scan()
        return self._standardization

    # ------------------------------------------------------------------ data
    def _model_units(self, table: _Table, ranges: np.ndarray) -> torch.Tensor:
        """The rows of ``ranges`` standardized into one float32 tensor, converted chunk by chunk (memory: the
        result plus one chunk, not float64 copies of the whole table)."""
        units = self.standardization
        lengths = ranges[:, 1] - ranges[:, 0]
        out = torch.empty(int(lengths.sum()), table.n_cols, dtype=torch.float32)
        done = 0
        for first, last in ranges.tolist():
            for start in range(first, last, CHUNK_ROWS):
                chunk = units.to_model(torch.from_numpy(table.read(start, min(start + CHUNK_ROWS, last))))
                out[done : done + len(chunk)] = chunk
                done += len(chunk)
        return out

    def train_data(self) -> torch.Tensor:
        """The training rows in model units (N, D) float32; not for streamed files (see :meth:`batch_source`)."""
        if self.streams:
            raise ConfigError(
                f"{self.path}: {self._table.nbytes / 2**20:.0f} MB is over stream_threshold_mb="
                f"{self.stream_threshold_mb:g}, so the training rows are read in batches, not loaded whole"
            )
        if "train" not in self._cache:
            self._cache["train"] = self._model_units(self._table, self.train_ranges)
        return self._cache["train"]

    def test_data(self) -> torch.Tensor:
        """The test rows in model units (N, D) float32 (loaded whole, also for streamed files)."""
        if "test" not in self._cache:
            self._cache["test"] = self._model_units(self._test_table, self.test_ranges)
        return self._cache["test"]

    def batch_source(self) -> BatchSource:
        """What :func:`~mflow_cli.training.train` takes: batches read from the file when it streams,
        else the in-memory training rows (:class:`~mflow_cli.training.TensorBatches`)."""
        if not self.streams:
            return TensorBatches(self.train_data())
        pieces = _block_pieces(self.train_ranges, self.block_rows)
        return StreamedBatches(self._table, pieces, self.standardization, STREAM_WINDOW_BLOCKS)
