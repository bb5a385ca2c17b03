"""Figures for flow-VAEs: sample grid, test reconstructions, training curves and, for 2-D latents, the
latent space coloured by label (posterior samples z_K of test images, as in the flow-VAE figures)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..datasets.base import Dataset
from .common import pyplot, save, training_curves


def tile(images: torch.Tensor, cols: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> one (rows·(H+1), cols·(W+1), C) mosaic with 1-pixel gaps."""
    n, c, h, w = images.shape
    rows = -(-n // cols)
    out = torch.ones(rows * (h + 1), cols * (w + 1), c)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, k * (w + 1) : k * (w + 1) + w] = images[i].permute(1, 2, 0)
    return out


def _images(dataset: Dataset, x: torch.Tensor) -> torch.Tensor:
    convert = getattr(dataset, "to_images", None)
    return (convert(x) if convert is not None else x).clamp(0, 1).cpu()


def _draw_mosaic(mosaic: torch.Tensor, title: str, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6 * mosaic.shape[0] / mosaic.shape[1] + 0.3))
    img = mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic
    ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def plot_flow_vae(
    model,
    dataset: Dataset,
    records: list[dict],
    out_dir: Path,
    n_samples: int = 100,
    n_reconstructions: int = 32,
    latent_points: int = 5000,
    seed: int = 0,
) -> list[Path]:
    torch.manual_seed(seed)
    paths = [training_curves(records, out_dir / "training_curves.png")]
    device = next(model.parameters()).device
    cols = 10
    samples = model.sample(n_samples).reshape(n_samples, *model.data_shape)
    if len(model.data_shape) == 3:
        paths.append(_draw_mosaic(tile(_images(dataset, samples), cols), "samples (decoder means at z ~ p(z))",
                                  out_dir / "samples.png"))
    test = dataset.test_data()
    if len(model.data_shape) == 3 and n_reconstructions > 0:
        x = test[:n_reconstructions].to(device)
        with torch.no_grad():
            z = model.encode(x)["latents"]
            loc, _ = model.decode(z)
        recon = torch.sigmoid(loc) if model.likelihood == "bernoulli" else loc
        pairs = torch.stack([x.cpu(), recon.reshape(x.shape).cpu()], 1).reshape(-1, *model.data_shape)
        paths.append(_draw_mosaic(tile(_images(dataset, pairs), 8), "test images and reconstructions (posterior mean)",
                                  out_dir / "reconstructions.png"))
    if model.latent_dim == 2 and latent_points > 0:
        x = test[:latent_points]
        with torch.no_grad():
            z = torch.cat([model.encode(c.to(device))["samples"].cpu() for c in torch.split(x, 1000)])
        labels_fn = getattr(dataset, "labels", None)
        labels = labels_fn("test")[: len(x)] if labels_fn is not None else torch.zeros(len(x))
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 5.2))
        pts = ax.scatter(z[:, 0], z[:, 1], c=labels.numpy(), cmap="tab10", s=2, alpha=0.7)
        fig.colorbar(pts, ax=ax, label="label")
        ax.set_xlabel("z₁")
        ax.set_ylabel("z₂")
        flow = model.flow.kind if model.flow.length else "none"
        ax.set_title(f"posterior samples z_K of test images (flow: {flow}, K = {model.flow.length})", fontsize=9)
        paths.append(save(fig, out_dir / "latent_space.png"))
    return [p for p in paths if p is not None]
