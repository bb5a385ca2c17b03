"""The intrinsic-dimension figure: the estimates against the neighbourhood size they look at."""

from __future__ import annotations

from pathlib import Path

from ..metrics.intrinsic_dimension import IntrinsicDimension
from .common import pyplot, save


def plot_intrinsic_dimension(result: IntrinsicDimension, path: str | Path) -> Path:
    """PNG of the MLE estimate against the neighbourhood size k with its spread over subsets (band),
    the k range its estimate averages over (shaded), and TwoNN and local PCA as horizontal lines with bands.

    A plateau of the curve is the dimension; a rise at small k is noise off the manifold, a fall at
    large k is curvature or the data's boundary.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    k = result.k_values
    lo, hi = result.mle_k
    ax.axvspan(lo, hi, color="0.92", zorder=0, label=f"MLE averaged over k = {lo}–{hi}")
    mle_label = f"Levina–Bickel MLE ({result.estimates['mle']:.2f} ± {result.spread['mle']:.2f})"
    ax.plot(k, result.mle_curve, color="C0", marker="o", markersize=3, label=mle_label)
    ax.fill_between(
        k,
        result.mle_curve - result.mle_curve_spread,
        result.mle_curve + result.mle_curve_spread,
        color="C0",
        alpha=0.25,
        linewidth=0,
    )
    for name, label, colour, style in (("two_nn", "TwoNN", "C1", "--"), ("local_pca", "local PCA", "C2", ":")):
        value, spread = result.estimates[name], result.spread[name]
        ax.axhline(value, color=colour, linestyle=style, label=f"{label} ({value:.2f} ± {spread:.2f})")
        ax.axhspan(value - spread, value + spread, color=colour, alpha=0.15, linewidth=0)
    ax.axhline(result.suggested_latent_dim, color="0.3", linewidth=0.8)
    values = [*result.mle_curve, result.estimates["two_nn"], result.estimates["local_pca"]]
    top = max(max(values), result.suggested_latent_dim)
    ax.set_ylim(max(0.0, min(min(values), result.suggested_latent_dim) - 0.5), top + 0.5)
    ax.set_xlim(k.min() - 0.5, k.max() + 0.5)
    ax.set_xlabel("neighbourhood size k (nearest neighbours)")
    ax.set_ylabel("estimated intrinsic dimension")
    ax.set_title(
        f"Intrinsic dimension: suggested latent_dim = {result.suggested_latent_dim}\n"
        f"({result.n_points} points, spread over random halves)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return save(fig, Path(path))
