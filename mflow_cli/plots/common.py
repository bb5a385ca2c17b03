"""Figure helpers shared by the families' plotters."""

from __future__ import annotations

from pathlib import Path


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
