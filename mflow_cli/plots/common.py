"""Figure helpers shared by the families' plotters."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ConfigError


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported lazily: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 120 dpi, cropped to what is drawn, legends outside the axes included)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


TRAINING_QUANTITIES: dict[str, str] = {
    "loss": "loss (training objective)",
    "mse": "reconstruction MSE (per coordinate)",
    "nll": "NLL −log p(x) (nats per point)",
    "nll_latent": "latent NLL −log p(u) (nats per point)",
    "reconstruction": "reconstruction NLL −log p(x|z) (nats per point)",
    "recon": "log p(x|z), reconstruction (nats per point)",
    "kl": "KL(q(z|x) ‖ p(z)) (nats per point)",
    "mutual_information": "mutual information estimate Î(x; z) (nats)",
    "elbo": "ELBO (nats per point)",
    "logdet": "posterior flow log|det J| (nats per point)",
    "vq_recon": "VQ auto-encoder reconstruction MSE (per coordinate)",
    "vq_commit": "VQ commitment ‖E(x) − v‖² (per coordinate)",
    "vq_restarts": "dead VQ codes restarted (count, cumulative)",
}
"""Panel titles of the quantities the models log per epoch (any other key is titled by its name)."""

HELD_OUT_PREFIX = "val_"
"""Records carry the held-out value of a quantity ``q`` as ``val_q``: drawn dashed on ``q``'s panel."""

NOT_PLOTTED = ("phase", "epoch", "step", "time", "lr", "nonfinite_steps")


def value_scale(values: list[float]) -> str:
    """``"log"`` for positive values spanning a decade or more, ``"symlog"`` for values that change sign or
    whose magnitude spans three decades while the later half of the curve stays within a tenth of the whole
    range, else ``"linear"``."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return "linear"
    low, high = min(finite), max(finite)
    if low > 0:
        return "log" if high / low >= 10 else "linear"
    late = finite[len(finite) // 2 :]
    spread = high - low
    if spread > 0 and max(late) - min(late) < 0.1 * spread and max(abs(low), abs(high)) > 0:
        return "symlog"
    return "linear"


def _log_axis_labels(ax, values: list[float]) -> None:
    """Plain numbers on a log y-axis (2, 5, 10, 20 …, not 2×10⁰); minor ticks labelled within two decades."""
    from matplotlib import ticker

    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    finite = [v for v in values if math.isfinite(v) and v > 0]
    narrow = bool(finite) and max(finite) / min(finite) < 100
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g") if narrow else ticker.NullFormatter())


def curve_panels(records: list[dict]) -> list[tuple[str, str | None]]:
    """The panels of :func:`training_curves`: (key, phase) for a key that several phases log (their objectives
    differ), (key, None) for the others; held-out keys ``val_<key>`` share the panel of ``<key>``."""
    logged = list(dict.fromkeys(k for r in records for k in r if k not in NOT_PLOTTED))
    keys = [k for k in logged if not (k.startswith(HELD_OUT_PREFIX) and k[len(HELD_OUT_PREFIX) :] in logged)]
    phases = list(dict.fromkeys(r["phase"] for r in records))
    panels: list[tuple[str, str | None]] = []
    for key in keys:
        with_key = [p for p in phases if any(r["phase"] == p and r.get(key) is not None for r in records)]
        panels += [(key, p) for p in with_key] if len(with_key) > 1 else [(key, None)]
    return panels


def training_curves(records: list[dict], path: Path) -> Path | None:
    """One panel per logged quantity (and per phase, where phases log the same key for different objectives)
    against the epoch counted over all phases, titled with what it is.

    A held-out value (``val_<key>``) is drawn dashed on the panel of ``<key>``. The y-axis is logarithmic when a
    curve spans a decade or more (:func:`value_scale`), so the first epoch does not flatten the rest.
    """
    if not records:
        return None
    panels = curve_panels(records)
    if not panels:
        return None
    plt = pyplot()
    phases = list(dict.fromkeys(r["phase"] for r in records))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows), squeeze=False)
    for ax, (key, only) in zip(axes.flat, panels, strict=False):
        values = []
        for colour, phase in enumerate(phases):
            if only is not None and phase != only:
                continue
            for name, style, label in ((key, "-", "training"), (HELD_OUT_PREFIX + key, "--", "held-out")):
                pts = [(i + 1, r[name]) for i, r in enumerate(records)
                       if r["phase"] == phase and r.get(name) is not None]
                if pts:
                    values += [v for _, v in pts]
                    ax.plot(*zip(*pts, strict=True), ls=style, color=f"C{colour}",
                            marker="." if len(pts) < 20 else None,
                            label=(f"{phase}, " if len(phases) > 1 and only is None else "") + label)
        scale = value_scale(values)
        if scale == "symlog":
            late = [abs(v) for v in values[len(values) // 2 :] if math.isfinite(v)]
            ax.set_yscale("symlog", linthresh=max(late) or 1.0)  # the later epochs in the linear part
        elif scale == "log":
            ax.set_yscale("log")
            _log_axis_labels(ax, values)
        ax.set_xlabel("epoch" + (" (all phases)" if len(phases) > 1 else ""))
        title = TRAINING_QUANTITIES.get(key, key.replace("_", " "))
        ax.set_ylabel(key + ("" if scale == "linear" else f" ({scale} scale)"))
        ax.set_title(title + (f"\nphase {only!r}" if only is not None else ""), fontsize=10)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=8, loc="best")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    held_out = any(k.startswith(HELD_OUT_PREFIX) for r in records for k in r)
    fig.suptitle("training curves (mean per epoch" + ("; dashed: held-out data)" if held_out else ")"), fontsize=11)
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


def samples_to_draw(model: torch.nn.Module, samples: torch.Tensor | None, n: int, data_shape: tuple[int, ...]):
    """The samples a figure draws, flat (N, D) on the CPU: the user's ``samples`` (e.g. the file of
    ``mflow plot RUN --samples FILE``), shaped (N, *data_shape) or (N, D), else ``n`` fresh model samples.

    A sample array of another shape raises :class:`~mflow_cli.errors.ConfigError`.
    """
    dim = math.prod(data_shape)
    if samples is None:
        with torch.no_grad():
            return model.sample(n).reshape(n, dim).detach().float().cpu()
    shape = tuple(samples.shape)
    if len(shape) < 2 or shape[0] < 1 or (shape[1:] != tuple(data_shape) and shape[1:] != (dim,)):
        want = f"(N, {', '.join(map(str, data_shape))})" + (f" or (N, {dim})" if len(data_shape) > 1 else "")
        raise ConfigError(f"samples must have shape {want}, got {shape}")
    return samples.reshape(shape[0], dim).detach().float().cpu()


def sample_subset(samples: torch.Tensor, n_data: int) -> torch.Tensor:
    """At most half as many samples as there are data points (at least 1), so the data stay visible under them."""
    return samples[: max(1, min(len(samples), n_data // 2))]


def legend_outside(ax, **kwargs) -> None:
    """A legend right of the axes, off the data; markers enlarged so tiny scatter points read."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, markerscale=3,
              frameon=False, **kwargs)
