"""The glossary describes exactly the keys the evaluators emit: each evaluator runs on tiny models and datasets
that take every branch it has, every key it returns must be in its module's ``METRICS`` table (so the README
glossary and the JSON's metadata can never miss one), and every key of the table must be emitted by one of the
runs (so the table holds no stale key)."""

from __future__ import annotations

import math
import re
from functools import cache

import pytest
import torch
from helpers import TinyImages

from mflow_cli.datasets.circle import VonMisesCircle
from mflow_cli.datasets.images import ImageManifold
from mflow_cli.datasets.sphere import VonMisesSphereMixture
from mflow_cli.datasets.spiral import ThinSpiral
from mflow_cli.datasets.toy3d import Toy3D
from mflow_cli.metrics import flow_vae, images, manifold, vq_flow
from mflow_cli.metrics.common import UNITS
from mflow_cli.metrics.flow_vae import VariationalEvaluation, evaluate_flow_vae
from mflow_cli.metrics.glossary import (
    all_metrics,
    all_renamed,
    glossary_markdown,
    metadata_block,
    renamed_keys,
    split_timings,
)
from mflow_cli.metrics.images import ImageEvaluation, evaluate_images
from mflow_cli.metrics.manifold import ManifoldEvaluation, evaluate_manifold
from mflow_cli.metrics.vq_flow import AtlasEvaluation, evaluate_vq_flow
from mflow_cli.models.flow_vae import FlowVAE
from mflow_cli.models.manifold_flow import ManifoldFlow
from mflow_cli.models.vq_flow import VQFlow

torch.set_num_threads(1)


def tiny_manifold_flow(data_shape, latent_dim, **kw) -> ManifoldFlow:
    torch.manual_seed(0)
    return ManifoldFlow(data_shape, latent_dim=latent_dim, outer_layers=1, inner_layers=1, hidden_features=8,
                        num_blocks=1, **kw).eval()


@cache
def manifold_runs() -> list[dict]:
    """DNF and M-flow (no ambient density) on the spiral (2-D grid, no exact distance), the circle (1-D chart)
    and the sphere (2-D chart)."""
    small = ManifoldEvaluation(manifold_grid_points=200, ambient_grid_size=6, n_samples=40, chart_grid_size=6)
    runs = []
    for dataset, latent_dim in ((ThinSpiral(n_train=20, n_test=30), 1), (VonMisesCircle(n_train=20, n_test=30), 1),
                                (VonMisesSphereMixture(n_train=20, n_test=30), 2)):
        for noise_std in (0.1, 0.0):  # DNF (deflated keys), M-flow
            model = tiny_manifold_flow(dataset.data_shape, latent_dim, noise_std=noise_std)
            runs.append(evaluate_manifold(model, dataset, small))
    return runs


@cache
def vq_flow_runs(tmp: str) -> list[dict]:
    """Two charts on a 3-D toy (distances, FID) and on pixel data (bits/dim), one chart on the toy."""
    runs = []
    for dataset, charts, fid in ((Toy3D("spheres", n_train=60, n_test=30), 2, True), (TinyImages(), 2, False),
                                 (Toy3D("spheres", n_train=60, n_test=30), 1, False)):
        torch.manual_seed(0)
        model = VQFlow(dataset.data_shape, num_charts=charts, chart_layers=1, hidden_features=8,
                       vq_hidden_features=8).eval()
        options = AtlasEvaluation(n_samples=5, mass_samples=100, fid=fid, fid_samples=40, fid_cache_dir=tmp)
        runs.append(evaluate_vq_flow(model, dataset, options))
    return runs


def images_runs(tmp: str) -> list[dict]:
    data = ImageManifold(source="procedural", resolution=8, n_train=30, n_test=10)
    model = tiny_manifold_flow((3, 8, 8), 2, architecture="image", levels=2)
    return [evaluate_images(model, data, ImageEvaluation(n_test=6, n_samples=4, n_reference=20))]


def flow_vae_runs(tmp: str) -> list[dict]:
    torch.manual_seed(0)
    model = FlowVAE((1, 4, 4), latent_dim=2, posterior_flow="planar", posterior_layers=2, hidden=[8],
                    likelihood="gaussian").eval()
    return [evaluate_flow_vae(model, TinyImages(), VariationalEvaluation(iw_samples=4))]


MINE = {"manifold": (manifold, lambda tmp: manifold_runs()), "vq_flow": (vq_flow, vq_flow_runs)}
OTHERS = {"images": (images, images_runs), "flow_vae": (flow_vae, flow_vae_runs)}


@pytest.mark.parametrize("evaluator", sorted(MINE))
def test_the_table_holds_exactly_the_emitted_keys(evaluator, tmp_path_factory):
    module, runs = MINE[evaluator]
    emitted = set().union(*(run.keys() for run in runs(str(tmp_path_factory.mktemp("fid")))))
    table = module.METRICS
    assert emitted - table.keys() == set(), "emitted keys missing from METRICS"
    assert table.keys() - emitted == set(), "METRICS keys no evaluation emits"


@pytest.mark.parametrize("evaluator", sorted(OTHERS))
def test_the_other_evaluators_emit_only_keys_of_their_tables(evaluator, tmp_path):
    module, runs = OTHERS[evaluator]
    table = all_metrics()[evaluator]
    if not table:
        pytest.skip(f"metrics/{evaluator}.py defines no METRICS yet")
    assert table is not module.METRICS and table == module.METRICS
    emitted = set().union(*(run.keys() for run in runs(str(tmp_path))))
    assert emitted - table.keys() == set()


@pytest.mark.parametrize("evaluator", sorted(MINE))
def test_entries_use_the_known_units_and_directions(evaluator):
    for key, metric in MINE[evaluator][0].METRICS.items():
        assert metric.unit in UNITS, (key, metric.unit)
        assert metric.better in ("higher", "lower", "closer to 1", "n/a"), key
        assert metric.timing == (key.endswith("_per_s") or key.endswith("_seconds")), key
        assert metric.name and metric.doc.endswith(".") and metric.name != key, key


@pytest.mark.parametrize("evaluator", sorted(MINE))
def test_renamed_keys_lead_to_keys_of_the_table(evaluator):
    module = MINE[evaluator][0]
    assert module.RENAMED_METRICS and set(module.RENAMED_METRICS.values()) <= module.METRICS.keys()
    assert not set(module.RENAMED_METRICS) & module.METRICS.keys()


def test_old_evaluation_files_read_with_todays_keys():
    old = {"reconstruction_error": 0.5, "ambient_grid_seconds": 1.0, "fid": 3.0, "kl_true_model": 0.02}
    assert renamed_keys(old) == {"reconstruction_mean_squared_distance": 0.5, "grid_manifold_density_seconds": 1.0,
                                 "frechet_feature_distance": 3.0, "kl_true_model": 0.02}
    assert all_renamed()["manifold"]["chart_grid_mass"] == "model_mass_on_chart_grid"


def test_metadata_block_describes_each_key_and_refuses_unknown_ones():
    run = manifold_runs()[0]
    block = metadata_block(run)
    assert list(block) == list(run)
    assert block["kl_true_model"] == {"name": manifold.METRICS["kl_true_model"].name, "unit": "nats",
                                      "better": "lower", "timing": False}
    assert block["manifold_density_points_per_s"]["timing"] is True
    assert metadata_block(["n_test"], vq_flow.METRICS)["n_test"]["unit"] == "count"
    with pytest.raises(KeyError, match="'no_such_metric'"):
        metadata_block(["n_test", "no_such_metric"])


def test_glossary_markdown_has_one_row_per_key():
    text = glossary_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    tables = all_metrics()
    assert len(rows) == sum(len(t) for t in tables.values())
    for table in tables.values():
        for key, metric in table.items():
            row = next(r for r in rows if r.startswith(f"| `{key}` |"))
            assert row.endswith(f"| {metric.unit} | {metric.better} |"), row
            assert len(re.findall(r"(?<!\\)\|", row)) == 5, row  # four cells: pipes in the text are escaped


def test_the_kl_of_covered_mass_and_the_masses_are_consistent():
    """The doc's claims: kl ≥ 0, the masses are fractions, and the covered true mass is 1 − the missed mass."""
    for run in manifold_runs():
        assert run["kl_true_model"] is None or run["kl_true_model"] >= -1e-9
        assert 0 <= run["true_mass_off_learned_manifold"] <= 1 + 1e-6
        assert run["model_mass_on_true_manifold"] >= 0 and math.isfinite(run["model_mass_on_true_manifold"])


def test_timings_go_to_their_own_table():
    run = manifold_runs()[0]
    quality, timings = split_timings(run)
    assert set(timings) == {"manifold_density_points_per_s", "grid_manifold_density_seconds"}
    assert list(quality) == [k for k in run if k not in timings] and quality["n_test"] == run["n_test"]
