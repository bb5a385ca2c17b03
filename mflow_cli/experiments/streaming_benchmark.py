"""Training on a table larger than memory should allow: streamed from the file vs loaded whole.

    python -m mflow_cli.experiments.streaming_benchmark --rows 10000000 --dim 40 --file /tmp/big.h5

Writes (once) an HDF5 file of ``rows`` × ``dim`` float32 rows near a 4-dimensional manifold, then, each in a fresh
process, trains the same small DNF for ``--steps`` steps with the file read in batches
(``stream_threshold_mb: 0``) and loaded whole (a threshold above the file's size), and reports the peak resident
memory (VmHWM) and the training samples per second of each (data checks and standardization included in the
peak, excluded from the rate).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from rich.console import Console
from rich.table import Table

WORKER = """
import json, sys, time
import torch
from mflow_cli.datasets.arrays import ArrayDataset
from mflow_cli.models.manifold_flow import ManifoldFlow
from mflow_cli.training import TrainConfig, TrainingInterrupted, TrainingMonitor, train

path, threshold, steps, batch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
dataset = ArrayDataset(path, stream_threshold_mb=threshold, test_fraction=0.01, n_test=2000)
source = dataset.batch_source()  # checks every row and computes the standardization (one pass)

class Stop(TrainingMonitor):
    def __init__(self):
        self.seen, self.start = 0, None
    def step(self, phase, epoch, logs):
        self.seen += 1
        if self.seen == 10:
            self.start = time.perf_counter()  # after warm-up
        if self.seen == steps:
            self.seconds = time.perf_counter() - self.start
            raise KeyboardInterrupt

model = ManifoldFlow(dataset.data_shape, latent_dim=4, outer_layers=4, hidden_features=64, num_blocks=1)
stop = Stop()
try:
    train(model, source, TrainConfig(epochs=1, batch_size=batch, checkpoint_every=10**9), monitor=stop)
except TrainingInterrupted:
    pass
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
sys.stdout.write(json.dumps({"streams": dataset.streams, "peak_rss_mb": hwm,
                             "samples_per_s": (steps - 10) * batch / stop.seconds}) + "\n")
"""


def write_table(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    """``rows`` × ``dim`` float32 rows near a 4-D manifold (a random smooth map, rotated), in 100k-row chunks."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(4, dim))
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset("x", shape=(rows, dim), dtype="float32", chunks=(8192, dim))
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            u = rng.normal(size=(n, 4))
            x = np.tanh(u @ mix) + 0.01 * rng.normal(size=(n, dim))
            ds[start : start + n] = (x @ rotation).astype("float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=40)
    parser.add_argument("--file", type=Path, default=Path("runs/streaming_benchmark.h5"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    console = Console()
    if not args.file.is_file():
        start = time.perf_counter()
        args.file.parent.mkdir(parents=True, exist_ok=True)
        write_table(args.file, args.rows, args.dim)
        console.print(f"wrote {args.file} ({args.file.stat().st_size / 2**30:.2f} GiB) in "
                      f"{time.perf_counter() - start:.0f} s")
    size_mb = args.file.stat().st_size / 2**20
    table = Table(title=f"{args.rows:,} × {args.dim} float32 ({size_mb:,.0f} MB), {args.steps} steps of "
                        f"{args.batch}, one thread")
    for col in ("mode", "peak RSS (MB)", "training samples/s"):
        table.add_column(col)
    for label, threshold in (("streamed from the file", 0.0), ("loaded whole", 10 * size_mb)):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", WORKER, str(args.file), str(threshold), str(args.steps),
                               str(args.batch)], capture_output=True, text=True, env=env, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        table.add_row(label, f"{result['peak_rss_mb']:,.0f}", f"{result['samples_per_s']:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
