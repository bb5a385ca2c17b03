"""Figure helpers shared by the families' plotters."""

from __future__ import annotations

from pathlib import Path

import torch


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported lazily: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def training_curves(records: list[dict], path: Path) -> Path | None:
    """One panel per logged quantity against the global epoch; phases drawn in different colours."""
    if not records:
        return None
    plt = pyplot()
    skip = ("phase", "epoch", "step", "time", "lr", "nonfinite_steps")
    keys = list(dict.fromkeys(k for r in records for k in r if k not in skip))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    phases = list(dict.fromkeys(r["phase"] for r in records))
    for ax, key in zip(axes[0], keys, strict=False):
        for phase in phases:
            pts = [(i + 1, r[key]) for i, r in enumerate(records) if r["phase"] == phase and key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=phase)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        if key.startswith("mse") or key == "reconstruction":
            ax.set_yscale("log")
        if len(phases) > 1:
            ax.legend()
    return save(fig, path)


def mosaic(images: torch.Tensor, cols: int, gap: int = 1) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] -> one (rows·(H+gap) − gap, cols·(W+gap) − gap, C) array, white gaps."""
    n, c, h, w = images.shape
    rows = max(1, -(-n // cols))
    out = torch.ones(rows * (h + gap) - gap, cols * (w + gap) - gap, c)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, k * (w + gap) : k * (w + gap) + w] = images[i].permute(1, 2, 0)
    return out


def image_grid(
    images: torch.Tensor, path: Path, title: str, cols: int = 8, row_labels: list[str] | None = None
) -> Path:
    """Draw images (N, C, H, W) in [0, 1] as a grid of ``cols`` columns (greyscale for C = 1), with a title
    and optionally a label at the left of each row."""
    images = images.detach().float().cpu().clamp(0, 1)
    cols = max(1, min(cols, len(images)))
    grid = mosaic(images, cols)
    rows = max(1, -(-len(images) // cols))
    plt = pyplot()
    width = min(12.0, max(3.0, 0.9 * cols))
    fig, ax = plt.subplots(figsize=(width, width * grid.shape[0] / grid.shape[1] + 0.5))
    pixels = (grid[..., 0] if grid.shape[-1] == 1 else grid).numpy()
    ax.imshow(pixels, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        h = images.shape[2]
        ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(rows)], row_labels[:rows], fontsize=7)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    else:
        ax.axis("off")
    ax.set_title(title, fontsize=9)
    return save(fig, path)
