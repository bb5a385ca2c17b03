"""Figures for flow-VAEs: sample grid, test reconstructions, training curves and, for 2-D latents, the
latent space coloured by label (posterior samples z_K of test images, as in the flow-VAE figures)
(:func:`plot_flow_vae`, figure options :class:`VariationalFigures`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..datasets.base import Dataset, Labelled, PixelData
from ..metrics.common import at_least, model_device
from ..metrics.flow_vae import VariationalEvaluation
from ..models.interfaces import VariationalModel
from .common import image_grid, pyplot, save, training_curves


@dataclass(frozen=True)
class VariationalFigures:
    r"""Settings only the figures of :func:`plot_flow_vae` use (the seed comes from :class:`VariationalEvaluation`).

    Arguments:
        n_samples: Model samples in the sample grid.
        n_reconstructions: Test images shown with their reconstructions (0 skips the figure).
        latent_points: Test images whose posterior samples are drawn in the 2-D latent space (0 skips it).
    """

    n_samples: int = 100
    n_reconstructions: int = 32
    latent_points: int = 5000

    def __post_init__(self) -> None:
        at_least("n_samples", self.n_samples, 1)
        at_least("n_reconstructions", self.n_reconstructions, 0)
        at_least("latent_points", self.latent_points, 0)


def plot_flow_vae(
    model: VariationalModel,
    dataset: Dataset,
    records: list[dict],
    out_dir: Path,
    options: VariationalEvaluation = VariationalEvaluation(),
    figure: VariationalFigures = VariationalFigures(),
) -> list[Path]:
    """Draw the figures of a flow-VAE into ``out_dir``; returns their paths.

    - ``training_curves.png``: every logged training quantity per epoch;
    - ``samples.png`` (:class:`~mflow_cli.datasets.base.PixelData`): ``n_samples`` decoder means at z ~ p(z);
    - ``reconstructions.png`` (PixelData): ``n_reconstructions`` test images, each followed by its
      reconstruction from the posterior mean;
    - ``latent_space.png`` (2-D latents): posterior samples z_K of ``latent_points`` test images, coloured
      by label for :class:`~mflow_cli.datasets.base.Labelled` datasets.
    """
    torch.manual_seed(options.seed)
    paths = [training_curves(records, out_dir / "training_curves.png")]
    device = model_device(model)
    n_samples = figure.n_samples
    test = dataset.test_data()
    if isinstance(dataset, PixelData):
        pixels = dataset.pixels
        samples = model.sample(n_samples).reshape(n_samples, *model.data_shape)
        paths.append(image_grid(pixels.to_images(samples.detach()), out_dir / "samples.png",
                                "samples (decoder means at z ~ p(z))", cols=10))
        if figure.n_reconstructions > 0:
            x = test[: figure.n_reconstructions].to(device)
            with torch.no_grad():
                z = model.encode(x)["latents"]
                loc, _ = model.decode(z)
            recon = torch.sigmoid(loc) if model.likelihood == "bernoulli" else loc
            pairs = torch.stack([x.cpu(), recon.reshape(x.shape).cpu()], 1).reshape(-1, *model.data_shape)
            paths.append(image_grid(pixels.to_images(pairs), out_dir / "reconstructions.png",
                                    "test images and reconstructions (posterior mean)", cols=8))
    if model.latent_dim == 2 and figure.latent_points > 0:
        x = test[: figure.latent_points]
        with torch.no_grad():
            z = torch.cat([model.encode(c.to(device))["samples"].cpu() for c in torch.split(x, 1000)])
        labels = dataset.labels("test")[: len(x)] if isinstance(dataset, Labelled) else torch.zeros(len(x))
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 5.2))
        pts = ax.scatter(z[:, 0], z[:, 1], c=labels.numpy(), cmap="tab10", s=2, alpha=0.7)
        fig.colorbar(pts, ax=ax, label="label")
        ax.set_xlabel("z₁")
        ax.set_ylabel("z₂")
        ax.set_title(f"posterior samples z_K of test images (flow: {model.posterior_flow_label})", fontsize=9)
        paths.append(save(fig, out_dir / "latent_space.png"))
    return [p for p in paths if p is not None]
