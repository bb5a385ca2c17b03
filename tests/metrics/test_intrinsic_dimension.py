"""Intrinsic-dimension estimates recover the known dimension of the simulators (issue 11's acceptance tests)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import special_ortho_group

from mflow_cli.datasets.images import ImageManifold
from mflow_cli.datasets.sphere import VonMisesSphereMixture
from mflow_cli.datasets.spiral import ThinSpiral
from mflow_cli.errors import ConfigError
from mflow_cli.metrics.intrinsic_dimension import estimate_intrinsic_dimension, local_pca, mle_curve, two_nn
from mflow_cli.plots.intrinsic_dimension import plot_intrinsic_dimension

torch.set_num_threads(1)


def three_sphere_in_r10(n: int, seed: int = 0) -> np.ndarray:
    """Uniform points on S³ ⊂ R⁴, padded with six zeros and turned by a random rotation of R¹⁰."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, 4))
    x = np.concatenate([g / np.linalg.norm(g, axis=1, keepdims=True), np.zeros((n, 6))], axis=1)
    return x @ special_ortho_group.rvs(10, random_state=seed + 1).T


CASES = {
    "thin_spiral": (lambda: ThinSpiral(n_train=5000).train_data().numpy(), 1),
    "sphere_mixture": (lambda: VonMisesSphereMixture(n_train=5000).train_data().numpy(), 2),
    "three_sphere_in_r10": (lambda: three_sphere_in_r10(5000), 3),
    "procedural_images_8x8": (
        lambda: ImageManifold(source="procedural", n_params=2, resolution=8, n_train=4000).train_data().numpy(),
        2,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_recovers_the_known_dimension(case):
    make, dim = CASES[case]
    result = estimate_intrinsic_dimension(make())
    assert result.suggested_latent_dim == dim
    # The MLE and local PCA are within a tenth of the truth; TwoNN sees the smallest scale, where the
    # images' 8-bit quantisation adds a little noise, so it may read up to 0.4 high there.
    assert abs(result.estimates["mle"] - dim) < 0.1
    assert result.estimates["local_pca"] == dim
    assert abs(result.estimates["two_nn"] - dim) < 0.4
    assert all(0 <= s < 0.15 for s in result.spread.values())


def test_noise_off_the_curve_shows_as_a_rise_at_small_k():
    """Thin noise (σ = 0.001) around the spiral: the smallest neighbourhoods see 2-D noise, larger ones the curve."""
    x = ThinSpiral(n_train=5000).train_data().double().numpy()
    noisy = x + 0.001 * np.random.default_rng(0).standard_normal(x.shape)
    result = estimate_intrinsic_dimension(noisy)
    curve = dict(zip(result.k_values.tolist(), result.mle_curve, strict=True))
    assert curve[3] > 1.4 and abs(curve[40] - 1) < 0.1 and curve[3] > curve[10] > curve[20] > curve[40]
    assert result.estimates["two_nn"] > 1.4  # TwoNN looks at the smallest scale only
    assert result.suggested_latent_dim == 1


def test_mle_curve_matches_brute_force():
    x = three_sphere_in_r10(300, seed=4)
    distances = np.sort(cdist(x, x), axis=1)[:, 1:]  # T_1 <= T_2 <= ... per point
    for k in (3, 7, 12):
        per_point = [sum(np.log(t[k - 1] / t[j]) for j in range(k - 1)) / (k - 1) for t in distances]
        assert mle_curve(x, [k])[0] == pytest.approx(1 / np.mean(per_point), rel=1e-10)


def test_two_nn_and_local_pca_on_a_flat_gaussian():
    frame = np.linalg.qr(np.random.default_rng(2).normal(size=(8, 5)))[0]  # 5 orthonormal columns in R^8
    x = np.random.default_rng(1).standard_normal((4000, 5)) @ frame.T  # no boundary to bias the estimates
    assert two_nn(x) == pytest.approx(5, abs=0.3)
    assert local_pca(x, neighbours=40) == 5


def test_duplicates_are_dropped_and_counted():
    x = ThinSpiral(n_train=2000).train_data().numpy()
    doubled = np.concatenate([x, x[:500]])
    result = estimate_intrinsic_dimension(doubled, n_subsets=2)
    assert result.n_duplicates == 500 and result.n_points == 2000
    assert np.isfinite(result.estimates["two_nn"]) and result.suggested_latent_dim == 1


def test_bad_arguments_are_config_errors():
    x = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(ConfigError, match="distinct points"):
        estimate_intrinsic_dimension(x)
    x[3, 1] = np.nan
    with pytest.raises(ConfigError, match="1 rows with non-finite"):
        estimate_intrinsic_dimension(x)


def test_plot_renders_a_png(tmp_path):
    import matplotlib.image

    x = three_sphere_in_r10(1000)
    result = estimate_intrinsic_dimension(x, n_subsets=2)
    path = plot_intrinsic_dimension(result, tmp_path / "dimension.png")
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # not a blank canvas
