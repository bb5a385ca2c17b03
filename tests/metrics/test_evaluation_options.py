"""Every field of every evaluation dataclass reaches what its evaluator computes.

For each field, the evaluator runs on a tiny model and dataset with the default options and with that field
changed to another valid value. Fields that select data, sample counts, seeds, grids or tolerances must change
the returned dict; fields that only split the work into batches (``batch_size``) or say where a cache lives
(``fid_cache_dir``) must give the same dict within float tolerance. The flow-VAE's ``batch_size`` also
reshapes its random posterior draws, so its bounds agree only within Monte-Carlo error (checked with a 2 %
bound; the deterministic keys exactly). Timing keys (``*_per_s``, ``*_seconds``) are left out of every
comparison.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import pytest
import torch
from helpers import TinyImages

from mflow_cli.datasets.images import ImageManifold
from mflow_cli.datasets.sphere import VonMisesSphereMixture
from mflow_cli.datasets.spiral import ThinSpiral
from mflow_cli.datasets.toy3d import Toy3D
from mflow_cli.errors import ConfigError
from mflow_cli.metrics.flow_vae import VariationalEvaluation, evaluate_flow_vae
from mflow_cli.metrics.images import ImageEvaluation, evaluate_images
from mflow_cli.metrics.manifold import ManifoldEvaluation, evaluate_manifold
from mflow_cli.metrics.vq_flow import AtlasEvaluation, evaluate_vq_flow
from mflow_cli.models.flow_vae import FlowVAE
from mflow_cli.models.manifold_flow import ManifoldFlow
from mflow_cli.models.vq_flow import VQFlow

torch.set_num_threads(1)


def tiny_manifold_flow(data_shape, latent_dim, **kw) -> ManifoldFlow:
    torch.manual_seed(0)
    model = ManifoldFlow(data_shape, latent_dim=latent_dim, outer_layers=1, inner_layers=1, hidden_features=8,
                         num_blocks=1, **kw)
    return model.eval()


@cache
def spiral_setup():  # a DNF (inflated, joint): ambient and deflated densities too
    return tiny_manifold_flow((2,), 1), ThinSpiral(n_train=200, n_test=50)


@cache
def sphere_setup():  # a 2-D manifold with a chart: chart_grid_size matters here
    return tiny_manifold_flow((3,), 2), VonMisesSphereMixture(n_train=50, n_test=30)


@cache
def image_setup():
    data = ImageManifold(source="procedural", resolution=8, n_train=30, n_test=10)
    return tiny_manifold_flow((3, 8, 8), 2, architecture="image", levels=2), data


@cache
def vq_setup():
    torch.manual_seed(0)
    model = VQFlow((3,), num_charts=2, chart_layers=1, hidden_features=8, vq_hidden_features=8).eval()
    return model, Toy3D("spheres", n_train=300, n_test=50)


@cache
def vae_setup():
    torch.manual_seed(0)
    model = FlowVAE((1, 4, 4), latent_dim=2, posterior_flow="planar", posterior_layers=2, hidden=[8],
                    likelihood="gaussian")
    return model.eval(), TinyImages()


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not (k.endswith("_per_s") or k.endswith("_seconds"))}


def _differs(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return True
    return any((x is None) != (y is None) or (x is not None and not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9))
               for x, y in zip(a.values(), b.values(), strict=True))


def _agree(a: dict, b: dict, rel: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key] is None or b[key] is None:
            assert a[key] is b[key], key
        else:
            assert math.isclose(a[key], b[key], rel_tol=rel, abs_tol=1e-6), (key, a[key], b[key])


SMALL_MANIFOLD = ManifoldEvaluation(manifold_grid_points=200, ambient_grid_size=10, n_samples=50)
SMALL_SPHERE = ManifoldEvaluation(manifold_grid_points=300, n_samples=40, chart_grid_size=8)
SMALL_IMAGES = ImageEvaluation(n_test=6, n_samples=4, n_reference=20)
SMALL_ATLAS = AtlasEvaluation(n_samples=5, mass_samples=200, fid_samples=60)
SMALL_VAE = VariationalEvaluation(iw_samples=8)

# (evaluator, setup, base options, field, other value); the base value is the base options' own.
CHANGES = [
    (evaluate_manifold, spiral_setup, SMALL_MANIFOLD, "manifold_grid_points", 150),
    (evaluate_manifold, spiral_setup, SMALL_MANIFOLD, "off_manifold_tolerance", 100.0),
    (evaluate_manifold, spiral_setup, SMALL_MANIFOLD, "ambient_grid_size", 12),
    (evaluate_manifold, spiral_setup, SMALL_MANIFOLD, "grid_limit", 1e30),  # overflows: finite fraction < 1
    (evaluate_manifold, spiral_setup, SMALL_MANIFOLD, "n_samples", 60),
    (evaluate_manifold, spiral_setup, SMALL_MANIFOLD, "seed", 1),
    (evaluate_manifold, sphere_setup, SMALL_SPHERE, "chart_grid_size", 10),
    (evaluate_images, image_setup, SMALL_IMAGES, "n_test", 5),
    (evaluate_images, image_setup, SMALL_IMAGES, "n_samples", 3),
    (evaluate_images, image_setup, SMALL_IMAGES, "n_reference", 3),
    (evaluate_images, image_setup, SMALL_IMAGES, "seed", 1),
    (evaluate_images, image_setup, SMALL_IMAGES, "projection_starts", 1),
    (evaluate_images, image_setup, SMALL_IMAGES, "projection_steps", 20),
    (evaluate_images, image_setup, SMALL_IMAGES, "knn_neighbours", 2),
    (evaluate_images, image_setup, SMALL_IMAGES, "fid", True),
    (evaluate_images, image_setup, dataclasses.replace(SMALL_IMAGES, fid=True), "fid_feature_net", "SCRIPTED_IMAGES"),
    (evaluate_vq_flow, vq_setup, SMALL_ATLAS, "n_samples", 6),
    (evaluate_vq_flow, vq_setup, SMALL_ATLAS, "mass_samples", 300),
    (evaluate_vq_flow, vq_setup, SMALL_ATLAS, "fid", True),
    (evaluate_vq_flow, vq_setup, dataclasses.replace(SMALL_ATLAS, fid=True), "fid_samples", 40),
    (evaluate_vq_flow, vq_setup, dataclasses.replace(SMALL_ATLAS, fid=True), "fid_feature_net", "SCRIPTED"),
    (evaluate_vq_flow, vq_setup, SMALL_ATLAS, "seed", 1),
    (evaluate_flow_vae, vae_setup, SMALL_VAE, "iw_samples", 4),
    (evaluate_flow_vae, vae_setup, SMALL_VAE, "max_examples", 10),
    (evaluate_flow_vae, vae_setup, SMALL_VAE, "seed", 1),
    (evaluate_flow_vae, vae_setup, SMALL_VAE, "tight_iw_samples", 16),
]
# Fields that cannot change the numbers: batch splits (within float tolerance) and the cache's place.
SAME = [
    (evaluate_manifold, spiral_setup, SMALL_MANIFOLD, "batch_size", 7),
    (evaluate_manifold, sphere_setup, SMALL_SPHERE, "batch_size", 7),
    (evaluate_images, image_setup, SMALL_IMAGES, "batch_size", 5),  # n_samples=4 ≤ 5: same sample draws
    (evaluate_vq_flow, vq_setup, SMALL_ATLAS, "batch_size", 7),  # n_samples=5 ≤ 7: same sample draws
    (evaluate_vq_flow, vq_setup, dataclasses.replace(SMALL_ATLAS, fid=True, fid_samples=6), "fid_cache_dir", "B"),
    (evaluate_images, image_setup, dataclasses.replace(SMALL_IMAGES, fid=True), "fid_cache_dir", "B"),
]


def _run(evaluate, setup, options, tmp_path):
    model, dataset = setup()
    if isinstance(options, AtlasEvaluation | ImageEvaluation) and options.fid_cache_dir == type(options).fid_cache_dir:
        options = dataclasses.replace(options, fid_cache_dir=str(tmp_path / "A"))
    return _numbers(evaluate(model, dataset, options))


def _other(field, value, tmp_path):
    if value == "SCRIPTED":
        net = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()))
        net.save(str(tmp_path / "features.pt"))
        return str(tmp_path / "features.pt")
    if value == "SCRIPTED_IMAGES":
        net = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4), torch.nn.Tanh()))
        net.save(str(tmp_path / "image_features.pt"))
        return str(tmp_path / "image_features.pt")
    return str(tmp_path / value) if field == "fid_cache_dir" else value


def test_every_field_is_covered():
    covered = {(options.__class__, field) for _, _, options, field, _ in CHANGES + SAME}
    covered.add((VariationalEvaluation, "batch_size"))  # test_flow_vae_batch_size_changes_only_the_random_draws
    for cls in (ManifoldEvaluation, ImageEvaluation, AtlasEvaluation, VariationalEvaluation):
        for field in dataclasses.fields(cls):
            assert (cls, field.name) in covered, field


@pytest.mark.parametrize("evaluate,setup,options,field,value", CHANGES, ids=[f"{c[2].__class__.__name__}.{c[3]}"
                                                                             for c in CHANGES])
def test_changing_the_field_changes_the_result(evaluate, setup, options, field, value, tmp_path):
    assert getattr(options, field) != value
    base = _run(evaluate, setup, options, tmp_path)
    changed = _run(evaluate, setup, dataclasses.replace(options, **{field: _other(field, value, tmp_path)}), tmp_path)
    assert _differs(base, changed), (field, base, changed)
    assert not _differs(base, _run(evaluate, setup, options, tmp_path))  # and the base repeats exactly


@pytest.mark.parametrize("evaluate,setup,options,field,value", SAME, ids=[f"{c[2].__class__.__name__}.{c[3]}"
                                                                         for c in SAME])
def test_fields_that_cannot_change_the_result(evaluate, setup, options, field, value, tmp_path):
    base = _run(evaluate, setup, options, tmp_path)
    _agree(base, _run(evaluate, setup, dataclasses.replace(options, **{field: _other(field, value, tmp_path)}),
                      tmp_path))


def test_flow_vae_batch_size_changes_only_the_random_draws():
    model, dataset = vae_setup()
    one_batch = evaluate_flow_vae(model, dataset, dataclasses.replace(SMALL_VAE, iw_samples=64))
    split = evaluate_flow_vae(model, dataset, dataclasses.replace(SMALL_VAE, iw_samples=64, batch_size=128))
    for key in ("n_test", "iw_samples", "data_dims"):
        assert one_batch[key] == split[key]
    for key in ("test_elbo", "test_iw_log_likelihood", "test_elbo_bits_per_dim", "test_iw_bits_per_dim"):
        assert math.isclose(one_batch[key], split[key], rel_tol=0.02), (key, one_batch[key], split[key])


@pytest.mark.parametrize("cls,field,value,message", [
    (ManifoldEvaluation, "batch_size", 0, "batch_size must be >= 1, got 0"),
    (ManifoldEvaluation, "off_manifold_tolerance", 0.0, "off_manifold_tolerance must be > 0, got 0.0"),
    (ImageEvaluation, "n_test", 0, "n_test must be >= 1, got 0"),
    (AtlasEvaluation, "mass_samples", 0, "mass_samples must be >= 1, got 0"),
    (VariationalEvaluation, "max_examples", 0, "max_examples must be >= 1, got 0"),
])
def test_out_of_range_options_raise_config_errors(cls, field, value, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        cls(**{field: value})
