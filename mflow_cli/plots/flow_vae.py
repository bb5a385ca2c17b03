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
from .common import image_grid, pyplot, samples_to_draw, save, training_curves


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
    samples: torch.Tensor | None = None,
) -> list[Path]:
    """Draw the figures of a flow-VAE into ``out_dir``; returns their paths.

    ``samples`` (N, *data_shape) or (N, D), in the model's space: show these (e.g. a sample file of the
    user's) instead of fresh decoder means.

    - ``training_curves.png``: every logged training quantity per epoch (:func:`~.common.training_curves`);
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
        what = "decoder means at z ~ p(z)" if samples is None else "given"
        shown = samples_to_draw(model, samples, n_samples, dataset.data_shape)
        shown = shown.reshape(len(shown), *dataset.data_shape)
        paths.append(image_grid(pixels.to_images(shown), out_dir / "samples.png",
                                f"model samples ({len(shown)}, {what})", cols=10))
        if figure.n_reconstructions > 0:
            x = test[: figure.n_reconstructions].to(device)
            with torch.no_grad():
                z = model.encode(x)["latents"]
                loc, _ = model.decode(z)
            recon = torch.sigmoid(loc) if model.likelihood == "bernoulli" else loc
            pairs = torch.stack([x.cpu(), recon.reshape(x.shape).cpu()], 1).reshape(-1, *model.data_shape)
            paths.append(image_grid(pixels.to_images(pairs), out_dir / "reconstructions.png",
                                    "test images, each followed by its reconstruction (decoder at the posterior "
                                    "mean)", cols=8))
    if model.latent_dim == 2 and figure.latent_points > 0:
        x = test[: figure.latent_points]
        with torch.no_grad():
            z = torch.cat([model.encode(c.to(device))["samples"].cpu() for c in torch.split(x, 1000)])
        labels = dataset.labels("test")[: len(x)] if isinstance(dataset, Labelled) else torch.zeros(len(x))
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 5.2))
        labelled = isinstance(dataset, Labelled)
        pts = ax.scatter(z[:, 0], z[:, 1], c=labels.numpy(), cmap="tab10", s=3, alpha=0.7, lw=0,
                         vmin=-0.5, vmax=9.5)
        if labelled:
            bar = fig.colorbar(pts, ax=ax, label="class label of the test image", ticks=range(10))
            bar.ax.set_ylim(-0.5, float(labels.max()) + 0.5)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("z₁ (latent coordinate)")
        ax.set_ylabel("z₂ (latent coordinate)")
        ax.set_title(f"posterior samples z_K of {len(x)} test images in the 2-D latent space\n"
                     f"(posterior flow: {model.posterior_flow_label})", fontsize=9)
        paths.append(save(fig, out_dir / "latent_space.png"))
    return [p for p in paths if p is not None]


def paired_gains_figure(rows: list[tuple[str, int, float, float]], baseline: str, k: int, path: Path) -> Path:
    """Each posterior's paired gain over ``baseline`` (its name as the axes say it) against its parameter count,
    the picture of the paired table (``flow_vae_mnist --paired``): ``rows`` (posterior label, parameters, gain in
    nats, its paired s.e.), the baseline's own row at 0. A family (the label before its first comma: ``planar``,
    ``sylvester_orthogonal``) is one colour joined in order of size, so planar K = 10 … 80 reads as a curve and
    posteriors of equal size stand one above another."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.4, 5.4))
    families: dict[str, list[tuple[str, int, float, float]]] = {}
    for label, parameters, gain, se in rows:
        families.setdefault(label.split(",")[0].split(" (")[0], []).append((label, parameters, gain, se))
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    for index, (family, members) in enumerate(families.items()):
        members.sort(key=lambda m: m[1])
        x = [m[1] / 1e6 for m in members]
        y = [m[2] for m in members]
        ax.errorbar(x, y, yerr=[m[3] for m in members], fmt="o-" if len(members) > 1 else "o", ms=5, lw=1.2,
                    capsize=3, color=f"C{index % 10}", label=family)
        for (label, _, _, _), xi, yi in zip(members, x, y, strict=True):
            note = label[len(family):].lstrip(", ") if len(members) > 1 else label
            ax.annotate(note, (xi, yi), xytext=(5, 4), textcoords="offset points", fontsize=7,
                        color=f"C{index % 10}")
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.08)
    low, high = ax.get_xlim()
    ax.set_xticks([t for t in (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50) if low <= t <= high])
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("parameters of the whole model (millions, log scale)")
    ax.set_ylabel(f"gain over {baseline} (nats per test image, paired, k = {k})")
    ax.set_title(f"each posterior's mean per-image gain in the IW bound over {baseline}\n"
                 "(error bars: paired standard error over the test images)", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return save(fig, path)
