"""Training on batches streamed from a file: resuming after a kill gives exactly the uninterrupted result."""

import copy

import h5py
import numpy as np
import pytest
import torch
from helpers import StopAt
from torch import nn

from mflow_cli.datasets import arrays
from mflow_cli.datasets.arrays import ArrayDataset, StreamedBatches
from mflow_cli.training import TensorBatches, TrainConfig, TrainingInterrupted, train


class NoisyGaussian(nn.Module):
    """A diagonal Gaussian fitted to noise-inflated data: its loss draws from the global RNG."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(dim))
        self.log_std = nn.Parameter(torch.zeros(dim))

    def phases(self):
        return ["density"]

    def phase_parameters(self, phase):
        return self.parameters()

    def loss(self, x, phase):
        x = x + 0.05 * torch.randn_like(x)
        nll = (0.5 * ((x - self.mean) / self.log_std.exp()) ** 2 + self.log_std).sum(1).mean()
        return nll, {"nll": nll.item()}


@pytest.fixture
def streamed(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "STREAM_BLOCK_BYTES", 16 * 4 * 4)
    monkeypatch.setattr(arrays, "STREAM_WINDOW_BLOCKS", 4)
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32) * [1, 2, 3, 4] + [1, 0, -1, 5]
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(16, 4), compression="gzip")
    dataset = ArrayDataset(tmp_path / "data.h5", stream_threshold_mb=0)
    assert dataset.streams
    return dataset


def run(source, config, resume=None, monitor=None, saved=None):
    torch.manual_seed(0)
    model = NoisyGaussian(4)
    if resume is not None:
        model.load_state_dict(resume["model"])
    save = None if saved is None else (lambda state: saved.append(copy.deepcopy(state)))  # as if written to disk
    try:
        train(model, source, config, seed=5, resume_state=resume, save_checkpoint=save, monitor=monitor)
    except TrainingInterrupted:
        return None
    return model.state_dict()


@pytest.mark.parametrize("stop", [5, 13, 24])
def test_streamed_training_resumes_exactly(streamed, stop):
    config = TrainConfig(epochs=3, batch_size=64, lr=1e-2, checkpoint_every=4)
    source = streamed.batch_source()
    assert isinstance(source, StreamedBatches) and len(source) == streamed.n_train_rows == 904  # 15 steps an epoch
    straight = run(source, config)
    saved = []
    assert run(source, config, monitor=StopAt(stop), saved=saved) is None
    resumed = run(source, config, resume=saved[-1])
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # Resuming from an earlier periodic checkpoint alone (as after SIGKILL) gives the same too.
    periodic = [s for s in saved if s["batch"] > 0 or s["epoch"] > 0]
    resumed = run(source, config, resume=periodic[0])
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # It did learn the standardized data (mean 0, std ~1 plus the noise).
    assert straight["mean"].abs().max() < 0.3 and (straight["log_std"].exp() - 1).abs().max() < 0.3


def test_tensor_batches_keep_the_in_memory_order():
    """The in-memory path serves data[randperm(n)] slices, as the loop always did (resume tests rely on it)."""
    data = torch.randn(250, 3)
    gen = torch.Generator().manual_seed(11)
    order = torch.randperm(250, generator=torch.Generator().manual_seed(11))
    batches = list(TensorBatches(data).batches(100, gen))
    assert [len(b) for b in batches] == [100, 100, 50]
    for b, batch in enumerate(batches):
        assert torch.equal(batch, data[order[b * 100 : (b + 1) * 100]])
    tail = list(TensorBatches(data).batches(100, torch.Generator().manual_seed(11), start=2))
    assert len(tail) == 1 and torch.equal(tail[0], batches[2])
