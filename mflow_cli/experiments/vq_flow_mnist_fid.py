"""FID-style score over training for classic flows vs their VQ counterparts on MNIST (VQ-Flow paper, Fig. 4).

    python -m mflow_cli.experiments.vq_flow_mnist_fid recipes/realnvp_mnist.yaml recipes/vqflow_mnist_realnvp.yaml \
        --set data.n_train=10000 --set train.epochs.density=5 --out runs/vq_flow_mnist_fid

trains each recipe with the generic trainer and, after every epoch of the ``flow`` phase, draws
``--n-fid`` samples and scores them against the test images with the Fréchet distance of
:mod:`mflow_cli.metrics.fid` (features of the small classifier mflow trains once and caches). Writes
``fid.json`` (per epoch: epoch, mean training NLL, FID; and the final test bits/dim), ``fid.png`` and
a grid of final samples per recipe into ``--out``. The global RNG is saved and restored around each score, so
training follows the same random stream as without scoring.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from rich.console import Console

from mflow_cli.app.recipe import load_recipe
from mflow_cli.app.runs import build_dataset, build_model
from mflow_cli.metrics.common import sample_in_batches
from mflow_cli.metrics.fid import fid_score
from mflow_cli.metrics.vq_flow import batched_log_prob, feature_network
from mflow_cli.plots.common import image_grid, pyplot, save
from mflow_cli.training import TrainConfig, TrainingMonitor, train

console = Console()


class FIDMonitor(TrainingMonitor):
    def __init__(self, model, dataset, net, reference, n: int):
        self.model, self.dataset, self.net, self.reference, self.n = model, dataset, net, reference, n
        self.scores: list[tuple[int, float, float]] = []

    def score(self) -> float:
        state = torch.get_rng_state()
        self.model.eval()
        samples = self.dataset.pixels.to_images(sample_in_batches(self.model, self.n, 500)).nan_to_num(0.5)
        self.model.train()
        torch.set_rng_state(state)
        return fid_score(self.net, samples, self.reference)

    def epoch_end(self, record):
        if record["phase"] == "density":
            self.scores.append((record["epoch"], record.get("nll", float("nan")), self.score()))
            console.print(f"  epoch {record['epoch']}: nll {self.scores[-1][1]:.2f}  FID {self.scores[-1][2]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--n-fid", type=int, default=1000)
    parser.add_argument("--out", default="runs/vq_flow_mnist_fid")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for path in args.recipes:
        recipe = load_recipe(path, args.overrides)
        dataset = build_dataset(recipe)
        data = dataset.train_data()
        torch.manual_seed(recipe.seed)
        model = build_model(recipe, tuple(data.shape[1:]))
        net = feature_network(dataset, None, "runs/.fid_cache")
        reference = dataset.pixels.to_images(dataset.test_data())
        monitor = FIDMonitor(model, dataset, net, reference, args.n_fid)
        console.print(recipe.name)
        train(model, data, TrainConfig(**recipe.train), seed=recipe.seed, monitor=monitor,
              batch_transform=dataset.batch_transform)
        model.eval()
        test = dataset.test_data()
        log_p = batched_log_prob(model, test, 500)
        bpd = float(-(log_p + dataset.pixels.log_jacobian_to_pixels(test)).mean() / (test[0].numel() * math.log(2)))
        console.print(f"  test bits/dim {bpd:.3f}")
        torch.manual_seed(0)
        image_grid(dataset.pixels.to_images(model.sample(64)), out / f"samples_{recipe.name}.png", recipe.name)
        results[recipe.name] = {"epoch_nll_fid": monitor.scores, "test_bits_per_dim": bpd}
    (out / "fid.json").write_text(json.dumps(results, indent=1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, res in results.items():
        scores = res["epoch_nll_fid"]
        ax.plot([s[0] for s in scores], [s[2] for s in scores], marker="o", label=name)
    ax.set_xlabel("epoch (flow phase)")
    ax.set_ylabel("Fréchet distance (classifier features)")
    ax.legend()
    console.print(f"wrote {save(fig, out / 'fid.png')} {out / 'fid.json'}")


if __name__ == "__main__":
    main()
