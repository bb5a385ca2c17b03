"""How many dimensions does the data really have? Intrinsic-dimension estimates to choose ``latent_dim``.

Three estimators that look at the data on different scales, all from nearest-neighbour distances
(:class:`scipy.spatial.cKDTree`):

* :func:`two_nn` uses only each point's first two neighbours (the smallest scale);
* :func:`mle_curve` is the Levina–Bickel maximum-likelihood estimate for each neighbourhood size k,
  so it shows how the estimate changes with scale: noise off the manifold inflates it at small k,
  curvature and the data's edges lower it at large k, and a plateau in between is the dimension;
* :func:`local_pca` counts the principal directions that hold most of the variance of each point's
  k-neighbourhood.

:func:`estimate_intrinsic_dimension` runs all three on (a subsample of) the data and on random halves of
it for a spread, and suggests a latent dimension: the rounded median of the three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ..errors import ConfigError

ESTIMATORS = ("two_nn", "mle", "local_pca")


def _neighbour_distances(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances (N, k) and indices (N, k) of each point's k nearest other points (itself excluded)."""
    distances, indices = cKDTree(x).query(x, k=k + 1)
    return distances[:, 1:], indices[:, 1:]


def two_nn(x: np.ndarray, discard_fraction: float = 0.1) -> float:
    r"""TwoNN estimate (Facco et al. 2017) from the ratios μ = r₂ / r₁ of each point's
    second to first neighbour distance.

    Under local uniformity μ follows a Pareto law, F(μ) = 1 − μ^{−d}, so −log(1 − F(μ)) = d·log μ:
    ``d`` is the slope of a line through the origin fitted to the empirical F, leaving out the
    ``discard_fraction`` largest μ (the paper's 10 %: the tail is dominated by noise and sparse regions).
    The points must be distinct (a zero r₁ makes μ infinite); :func:`estimate_intrinsic_dimension`
    deduplicates them first.

    References:
        | Estimating the intrinsic dimension of datasets by a minimal neighborhood information
          (Facco, d'Errico, Rodriguez & Laio, 2017)
        | https://arxiv.org/abs/1803.06992
    """
    distances, _ = _neighbour_distances(x, 2)
    mu = np.sort(distances[:, 1] / distances[:, 0])
    n = len(mu)
    keep = int(np.floor(n * (1 - discard_fraction)))
    log_mu = np.log(mu[:keep])
    empirical_cdf = np.arange(1, keep + 1) / n
    y = -np.log1p(-empirical_cdf)
    return float(np.dot(log_mu, y) / np.dot(log_mu, log_mu))


def mle_curve(x: np.ndarray, k_values: Sequence[int]) -> np.ndarray:
    r"""Levina–Bickel estimate m̂_k for each k in ``k_values``, averaged over points as MacKay & Ghahramani advise.

    For a point with neighbour distances T₁ ≤ … ≤ T_k, the inverse estimate is (Levina & Bickel 2004,
    eq. 8, with their k − 1 normaliser)

        m̂_k(x)⁻¹ = 1/(k − 1) · Σ_{j<k} log(T_k / T_j),

    which is unbiased for 1/m under a local Poisson process (the sum is Gamma(k − 1, m)). So the points are
    combined by averaging the inverses, m̂_k = [mean_x m̂_k(x)⁻¹]⁻¹ (MacKay & Ghahramani 2005), rather than
    Levina–Bickel's mean of the m̂_k(x), which is biased upwards for small k.

    References:
        | Maximum Likelihood Estimation of Intrinsic Dimension (Levina & Bickel, NeurIPS 2004)
        | https://papers.nips.cc/paper/2577-maximum-likelihood-estimation-of-intrinsic-dimension
        | Comments on 'Maximum Likelihood Estimation of Intrinsic Dimension' (MacKay & Ghahramani, 2005)
        | http://www.inference.org.uk/mackay/dimension/
    """
    k_values = np.asarray(k_values, dtype=int)
    distances, _ = _neighbour_distances(x, int(k_values.max()))
    log_t = np.log(distances)  # (N, K): log T_1 .. log T_K
    mean_log_below = np.cumsum(log_t, axis=1) / np.arange(1, log_t.shape[1] + 1)  # mean_{j<=i} log T_j
    inverse = log_t[:, k_values - 1] - mean_log_below[:, k_values - 2]  # (N, len(k)): m̂_k(x)⁻¹
    return 1.0 / inverse.mean(axis=0)


def local_pca(x: np.ndarray, neighbours: int = 20, variance_fraction: float = 0.95) -> float:
    r"""Local PCA: the median over points of the number of principal directions that explain
    ``variance_fraction`` of the variance of the point's ``neighbours``-nearest-neighbour patch.

    The patch (the point and its neighbours, centred on their mean) is flat to first order, so its
    covariance has ``d`` large eigenvalues; curvature and noise add small ones, which the threshold
    ignores as long as they hold less than 1 − ``variance_fraction`` of the variance. Eigenvalues come from
    the (k+1)×(k+1) Gram matrix of the patch, which has the same non-zero spectrum as the D×D covariance.

    References:
        | An Algorithm for Finding Intrinsic Dimensionality of Data (Fukunaga & Olsen, 1971)
        | https://doi.org/10.1109/T-C.1971.223208
    """
    _, indices = _neighbour_distances(x, neighbours)
    patches = x[np.concatenate([np.arange(len(x))[:, None], indices], axis=1)]  # (N, k+1, D)
    patches = patches - patches.mean(axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(patches @ patches.transpose(0, 2, 1))[:, ::-1]  # descending
    explained = np.cumsum(eigenvalues, axis=1) / eigenvalues.sum(axis=1, keepdims=True)
    dims = 1 + np.argmax(explained >= variance_fraction - 1e-12, axis=1)
    return float(np.median(dims))


@dataclass
class IntrinsicDimension:
    """The estimates of :func:`estimate_intrinsic_dimension` (all in dimensions)."""

    estimates: dict[str, float]
    """Each estimator's value on all (subsampled) points: ``two_nn``, ``mle`` (the curve's mean over
    ``mle_k``) and ``local_pca``."""
    spread: dict[str, float]
    """Standard deviation of each estimate over random subsets of the points."""
    k_values: np.ndarray
    mle_curve: np.ndarray
    """Levina–Bickel/MacKay–Ghahramani estimate for each neighbourhood size in ``k_values``."""
    mle_curve_spread: np.ndarray
    mle_k: tuple[int, int]
    """The k range (inclusive) the ``mle`` estimate averages over."""
    suggested_latent_dim: int
    """The rounded median of the estimates (at least 1)."""
    n_points: int
    """Distinct points the estimates used (after deduplication and subsampling)."""
    n_duplicates: int
    """Exact duplicate rows removed before estimating."""
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain numbers and lists, for JSON."""
        return {
            "estimates": self.estimates,
            "spread": self.spread,
            "k_values": self.k_values.tolist(),
            "mle_curve": self.mle_curve.tolist(),
            "mle_curve_spread": self.mle_curve_spread.tolist(),
            "mle_k": list(self.mle_k),
            "suggested_latent_dim": self.suggested_latent_dim,
            "n_points": self.n_points,
            "n_duplicates": self.n_duplicates,
            "settings": self.settings,
        }


def estimate_intrinsic_dimension(
    x: np.ndarray,
    *,
    k_values: Sequence[int] = range(3, 41),
    mle_k: tuple[int, int] = (10, 20),
    pca_neighbours: int = 20,
    variance_fraction: float = 0.95,
    max_points: int = 5000,
    n_subsets: int = 5,
    subset_fraction: float = 0.5,
    seed: int = 0,
) -> IntrinsicDimension:
    """TwoNN, the MLE curve over ``k_values`` and local PCA on the rows of ``x`` (N, D), with spreads.

    Exact duplicate rows are dropped (they give zero neighbour distances), then at most ``max_points``
    rows are drawn at random (seeded). Each estimate's spread is its standard deviation over
    ``n_subsets`` random subsets of ``subset_fraction`` of those points.

    Choices, and why:

    * The MLE estimate averages the curve over ``mle_k`` = 10…20, Levina & Bickel's range: small
      enough to stay local (curvature and the data's edges pull the estimate down at large k), large
      enough that thin noise off the manifold, which inflates the estimate at the smallest k, matters
      less. The whole curve over ``k_values`` is returned so this scale dependence can be looked at
      (:func:`mflow_cli.plots.intrinsic_dimension.plot_intrinsic_dimension`): a curve that falls
      with k towards a plateau means noise; read the dimension off the plateau.
    * Local PCA with ``pca_neighbours`` = 20 and 95 % of the variance: 20 points span a patch well for
      dimensions up to ~10, and the 5 % left over absorbs curvature and small noise.
    * TwoNN sees only the two nearest neighbours, so it is the most sensitive to noise (and to
      quantization, as in 8-bit images); the suggestion is the median of the three estimates, so one
      estimator off at its own scale does not move it.
    * ``max_points`` also sets the scale: fewer points are farther apart, which looks past noise of a
      given size.

    ``x`` may be any array-like (a CPU tensor too); it is flattened to (N, D) and read as float64.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(len(x), -1)
    k_values = np.asarray(list(k_values), dtype=int)
    lo, hi = mle_k
    if len(k_values) == 0 or k_values.min() < 2:
        raise ConfigError("k_values must be neighbourhood sizes >= 2")
    if not 2 <= lo <= hi:
        raise ConfigError(f"mle_k must be a range 2 <= lo <= hi, got {mle_k}")
    if not 0 < variance_fraction < 1:
        raise ConfigError(f"variance_fraction must be in (0, 1), got {variance_fraction}")
    if not 0 < subset_fraction <= 1:
        raise ConfigError(f"subset_fraction must be in (0, 1], got {subset_fraction}")
    if not np.isfinite(x).all():
        raise ConfigError(f"the data hold {int((~np.isfinite(x).all(axis=1)).sum())} rows with non-finite values")
    curve_k = np.union1d(k_values, np.arange(lo, hi + 1))
    unique = np.unique(x, axis=0)
    n_duplicates = len(x) - len(unique)
    rng = np.random.default_rng(seed)
    if len(unique) > max_points:
        unique = unique[rng.choice(len(unique), max_points, replace=False)]
    else:
        unique = unique[rng.permutation(len(unique))]
    n_subset = int(len(unique) * subset_fraction)
    needed = max(int(curve_k.max()), pca_neighbours) + 2
    if n_subset < needed:
        raise ConfigError(
            f"need at least {needed} distinct points in each subset for these neighbourhood sizes, "
            f"got {n_subset} ({len(unique)} distinct points)"
        )
    in_range = (curve_k >= lo) & (curve_k <= hi)

    def run(points: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        curve = mle_curve(points, curve_k)
        values = {
            "two_nn": two_nn(points),
            "mle": float(curve[in_range].mean()),
            "local_pca": local_pca(points, pca_neighbours, variance_fraction),
        }
        return values, curve

    estimates, curve = run(unique)
    subsets = [run(unique[rng.choice(len(unique), n_subset, replace=False)]) for _ in range(n_subsets)]
    spread = {name: float(np.std([s[0][name] for s in subsets])) if subsets else 0.0 for name in ESTIMATORS}
    curve_spread = np.std([s[1] for s in subsets], axis=0) if subsets else np.zeros_like(curve)
    shown = np.isin(curve_k, k_values)
    suggestion = max(1, int(np.round(np.median([estimates[name] for name in ESTIMATORS]))))
    return IntrinsicDimension(
        estimates=estimates,
        spread=spread,
        k_values=curve_k[shown],
        mle_curve=curve[shown],
        mle_curve_spread=curve_spread[shown],
        mle_k=(lo, hi),
        suggested_latent_dim=suggestion,
        n_points=len(unique),
        n_duplicates=n_duplicates,
        settings={
            "pca_neighbours": pca_neighbours,
            "variance_fraction": variance_fraction,
            "max_points": max_points,
            "n_subsets": n_subsets,
            "subset_fraction": subset_fraction,
            "seed": seed,
        },
    )
