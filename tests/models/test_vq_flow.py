"""VQ-Flow: chart rule, atlas density (paper eq. 2), conformal maps, VQ autoencoder, toy 3-D data, FID."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mflow_cli.datasets.toy3d import Toy3D, distance_to_support, sample_support
from mflow_cli.flows.conformal import ConditionalConformalEmbedding
from mflow_cli.metrics.fid import frechet_distance
from mflow_cli.models.base import standard_normal_log_prob
from mflow_cli.models.vq_autoencoder import VQAutoencoder
from mflow_cli.models.vq_flow import VQFlow, chart_membership


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _perturb(model: torch.nn.Module, scale: float = 0.3) -> None:
    """Move every weight off its (often identity) initialisation, so parity tests see a generic map."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


# --------------------------------------------------------------------------- chart rule
@pytest.mark.parametrize("m,eps", [(1, 0.0), (1, 0.3), (2, 0.1), (3, 0.5)])
def test_chart_membership_follows_the_epsilon_rule(m, eps):
    d = torch.rand(200, 6) * 3
    mask = chart_membership(d, m, eps)
    for i in range(d.shape[0]):
        dm = sorted(d[i].tolist())[m - 1]
        nearest = int(d[i].argmin())
        for k in range(d.shape[1]):
            expected = float(d[i, k]) < (1 + eps) * dm or k == nearest
            assert bool(mask[i, k]) == expected
    if eps > 0:  # the m nearest charts are always members
        assert (mask.sum(1) >= m).all()


@pytest.mark.parametrize("nearest_always", [True, False])
def test_chart_membership_ends_at_each_charts_reach(nearest_always):
    d = torch.rand(300, 5) * 4
    reach = torch.tensor([1.0, 2.0, 3.0, 0.5, 10.0])
    mask = chart_membership(d, 2, 0.3, reach, nearest_always=nearest_always)
    paper = chart_membership(d, 2, 0.3)
    nearest = torch.nn.functional.one_hot(d.argmin(1), 5).bool()
    for i in range(len(d)):
        for k in range(5):
            within = bool(paper[i, k]) and float(d[i, k]) <= float(reach[k])
            assert bool(mask[i, k]) == (within or (nearest_always and bool(nearest[i, k])))
    assert not torch.equal(mask, paper)


def test_model_membership_uses_encoder_distances():
    model = VQFlow((3,), num_charts=5, m=2, epsilon=0.25)
    x = torch.randn(50, 3)
    d = torch.cdist(model.vq.encoder(x), model.vq.codebook).detach()
    assert torch.equal(model.membership(x), chart_membership(d, 2, 0.25))


# --------------------------------------------------------------------------- density
def test_one_chart_without_dimension_change_is_the_plain_flow_density():
    """K = 1, d = D: log p(x) = log q(f(x)) + log|det ∂f/∂x| with the Jacobian by brute force (float64)."""
    model = VQFlow((3,), num_charts=1, chart_layers=4, hidden_features=16).double()
    _perturb(model.conformal, 0.2)
    _perturb(model.flow, 0.05)
    x = torch.randn(20, 3, dtype=torch.float64)
    k = torch.zeros(1, dtype=torch.long)

    def f(xi: torch.Tensor) -> torch.Tensor:
        context, offset = model._chart_inputs(k)
        u, _ = model.conformal.project(xi[None], context, offset)
        return model.flow(u, context=context)[0][0]

    ref = torch.stack(
        [standard_normal_log_prob(f(xi)) + torch.linalg.slogdet(torch.autograd.functional.jacobian(f, xi))[1]
         for xi in x]
    )
    with torch.no_grad():
        got = model.log_prob(x)
    assert torch.allclose(got, ref, atol=1e-9)
    assert model.phases() == ["density"]


@pytest.mark.parametrize("flow", ["realnvp", "maf"])
def test_thin_chart_density_jacobian_equals_conformal_closed_form(flow):
    """d < D: ½ log det(J_f J_fᵀ) from the batched Jacobian = log|det J_h| − d log s (conformal c)."""
    kw = dict(num_charts=3, m=3, epsilon=0.5, latent_dim=2, chart_flow=flow, chart_layers=3, hidden_features=16)
    jac = VQFlow((4,), thin_logdet="jacobian", **kw).double()
    _perturb(jac, 0.1)
    closed = VQFlow((4,), thin_logdet="conformal", **kw).double()
    closed.load_state_dict(jac.state_dict())
    x = torch.randn(30, 4, dtype=torch.float64)
    with torch.no_grad():
        a, b = jac.log_prob(x), closed.log_prob(x)
    assert torch.allclose(a, b, atol=1e-8)


def test_thin_chart_density_on_the_chart_image_matches_brute_force_gram():
    """At x = g_k(z): log p_k(x) = log q(z) − ½ log det(J_gᵀ J_g), J_g by reverse-mode autograd per point."""
    model = VQFlow((3,), num_charts=2, latent_dim=2, chart_layers=3, hidden_features=16).double()
    _perturb(model, 0.1)
    z = torch.randn(10, 2, dtype=torch.float64)
    k = torch.tensor([0, 1] * 5)
    with torch.no_grad():
        x = model.generate(z, k)
        z_back, log_pk = model.chart_log_density(x, k)
    assert torch.allclose(z_back, z, atol=1e-8)
    with torch.no_grad():
        drawn, drawn_k, drawn_z = model.sample_charts(7)  # thin charts: samples in R^3 from latents in R^2
    assert drawn.shape == (7, 3) and torch.allclose(drawn, model.generate(drawn_z, drawn_k))
    for i in range(len(z)):
        jg = torch.autograd.functional.jacobian(lambda zz, i=i: model.generate(zz[None], k[i : i + 1])[0], z[i])
        ref = standard_normal_log_prob(z[i]) - 0.5 * torch.logdet(jg.T @ jg)
        assert torch.allclose(log_pk[i], ref, atol=1e-8)


def _grid(limit: float, n: int) -> tuple[torch.Tensor, float]:
    axis = torch.linspace(-limit, limit, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), float(axis[1] - axis[0]) ** 2


def _grid_mass(model: VQFlow) -> float:
    """∫ p dx over [−8, 8]²: the density summed over a 241 × 241 grid, times the cell area."""
    x, cell = _grid(8.0, 241)
    return float(torch.exp(model.log_prob(x)).sum() * cell)


def test_atlas_density_integrates_to_one_on_a_2d_grid_when_every_chart_covers():
    """m = K: every x is in every chart, so p(x) is a mixture of flow densities: ∫ p = 1 (grid quadrature)."""
    model = VQFlow((2,), num_charts=3, m=3, epsilon=0.1, chart_layers=3, hidden_features=16).double()
    _perturb(model.flow, 0.05)
    with torch.no_grad():
        model.chart_logits.copy_(torch.tensor([0.3, -0.5, 0.1]))
        mass = _grid_mass(model)
    assert abs(mass - 1.0) < 0.01


def test_atlas_density_with_disjointish_charts_integrates_to_its_monte_carlo_mass():
    """m = 1: each chart keeps only its region; ∫ p = Σ_k p_k P(g_k(z) ∈ U_k) (grid vs Monte Carlo)."""
    model = VQFlow((2,), num_charts=3, m=1, epsilon=0.3, chart_layers=3, hidden_features=16).double()
    _perturb(model.flow, 0.05)
    with torch.no_grad():
        mass = _grid_mass(model)
        mc = model.chart_mass(40000)
    assert 0.05 < mass < 0.999
    assert abs(mass - mc) < 0.015


def test_sampling_round_trip_and_encode_outputs():
    model = VQFlow((3,), num_charts=4, m=2, epsilon=0.2, chart_layers=3, hidden_features=16).double()
    _perturb(model.flow, 0.05)
    with torch.no_grad():
        x, k, z = model.sample_charts(64)
        z_back, _ = model.chart_log_density(x, k)
        out = model.encode(x)
    assert torch.allclose(z_back, z, atol=1e-8)
    n = len(x)
    assert all(v.shape[0] == n for v in out.values())
    post = out["chart_posterior"]
    assert torch.allclose(post.sum(1), torch.ones(n, dtype=post.dtype))
    assert ((post > 0) <= model.membership(x)).all()
    table, b, kk, zz = model.chart_table(x)
    z_all = torch.zeros(n, 4, 3, dtype=torch.float64)
    z_all[b, kk] = zz
    assert torch.allclose(out["latents"], (post[:, :, None] * z_all).sum(1))
    rows = torch.arange(n)
    assert torch.allclose(out["latents_stochastic"], z_all[rows, out["chart"].long()])
    assert (post[rows, out["chart"].long()] > 0).all()
    assert torch.allclose(out["log_prob"], model.log_prob(x))


def test_density_loss_trains_the_charts_not_the_autoencoder():
    model = VQFlow((3,), num_charts=3, chart_layers=2, hidden_features=8)
    x = torch.randn(32, 3)
    loss, logs = model.loss(x, "density")
    loss.backward()
    assert math.isclose(logs["nll"], float(-model.log_prob(x).mean().detach()), rel_tol=1e-5)
    assert all(p.grad is None for p in model.vq.parameters())
    assert model.chart_logits.grad is not None and model.chart_logits.grad.abs().sum() > 0
    assert model.phases() == ["vq", "density"]


def test_the_background_chart_keeps_a_mixture_normalised_and_its_samples_are_standard_normal():
    """m = K and a background chart: p = p_0 q + Σ_k p_k p_k is still a mixture of densities, ∫ p = 1."""
    p0 = 0.3  # large, so a mistake in its term shows
    model = VQFlow((2,), num_charts=3, m=3, epsilon=0.1, chart_layers=3, hidden_features=16,
                   background_weight=p0).double()
    _perturb(model.flow, 0.05)
    with torch.no_grad():
        mass = _grid_mass(model)
        xs, k, z = model.sample_charts(20000)
    assert abs(mass - 1.0) < 0.01
    background = k == model.num_charts
    assert abs(float(background.float().mean()) - p0) < 0.02  # drawn with its weight
    assert torch.equal(xs[background], z[background])  # the identity chart map
    assert torch.allclose(model.log_chart_weights().exp().sum(), torch.tensor(1 - p0, dtype=torch.float64))


def test_with_a_background_chart_the_atlas_mass_is_p0_plus_the_charts_mass_on_their_regions():
    p0 = 0.2
    model = VQFlow((2,), num_charts=3, m=1, epsilon=0.3, chart_layers=3, hidden_features=16,
                   background_weight=p0).double()
    _perturb(model.flow, 0.05)
    with torch.no_grad():
        mass = _grid_mass(model)
        mc = model.chart_mass(40000)
    assert p0 + 0.05 < mass < 0.999
    assert abs(mass - mc) < 0.015


def test_the_background_chart_bounds_the_cost_of_a_point_every_chart_sends_far_away():
    """Flows that send x to |z| ~ 10^3 give −log p(x) ~ 10^6 alone; with the background chart it is at most
    −log p_0 − log q(x), and the encoder gives that point to the background chart."""
    plain = VQFlow((4,), num_charts=3, chart_layers=2, hidden_features=8).double()
    with torch.no_grad():
        plain.conformal.scale_net.bias.fill_(-6.0)  # every chart magnifies by e^6
    with_background = VQFlow((4,), num_charts=3, chart_layers=2, hidden_features=8,
                             background_weight=1e-3).double()
    with_background.load_state_dict(plain.state_dict())  # the background chart has no parameters
    x = torch.full((5, 4), 3.0, dtype=torch.float64)
    with torch.no_grad():
        lp_plain, lp = plain.log_prob(x), with_background.log_prob(x)
        out = with_background.encode(x)
    bound = math.log(1e-3) + standard_normal_log_prob(x)
    assert (lp_plain < -1e5).all()
    assert (lp >= bound - 1e-3).all() and (lp <= bound + 1e-3).all()
    post = out["chart_posterior"]
    assert post.shape == (5, 4) and torch.allclose(post.sum(1), torch.ones(5, dtype=torch.float64))
    assert (out["chart_map"] == 3).all() and torch.allclose(out["latents"], x)


def test_a_background_chart_needs_a_full_dimensional_chart_and_a_weight_below_one():
    with pytest.raises(ValueError, match=r"background chart \(background_weight > 0\) needs latent_dim equal to "
                                         "the data dimension 3, got 2"):
        VQFlow((3,), num_charts=2, latent_dim=2, background_weight=0.01)
    with pytest.raises(ValueError, match=r"background_weight must be in \[0, 1\), got 1.0"):
        VQFlow((3,), num_charts=2, background_weight=1.0)


def test_the_density_phase_starts_from_the_charts_share_of_the_training_rows():
    model = VQFlow((3,), num_charts=4, m=2, epsilon=0.3, chart_layers=2, hidden_features=8)
    _perturb(model.vq, 0.5)
    rows = torch.randn(3000, 3)
    asked = []

    def training_rows(n):
        asked.append(n)
        return rows

    model.start_phase("vq", training_rows)
    assert asked == [] and torch.equal(model.chart_logits, torch.zeros(4))
    model.start_phase("density", training_rows)
    members = model.membership(rows)
    share = torch.zeros(4)
    for row in members:  # brute force: each row splits one unit over its charts
        share += row.float() / row.sum()
    share /= len(rows)
    assert asked == [10_000]
    assert torch.allclose(model.log_chart_weights().exp(), share.clamp_min(1e-4) / share.clamp_min(1e-4).sum(),
                          atol=1e-6)


def test_the_density_phase_sets_each_charts_reach_and_far_points_fall_to_the_background_chart():
    model = VQFlow((3,), num_charts=4, m=2, epsilon=0.3, chart_layers=2, hidden_features=8, background_weight=1e-3)
    _perturb(model.vq, 0.5)
    rows = torch.randn(3000, 3)
    assert torch.equal(model.reach, model.unlimited_reach())  # before the density phase: the paper's rule alone
    model.start_phase("density", lambda n: rows)
    with torch.no_grad():
        d = model.vq.distances(rows)
    paper = chart_membership(d, 2, 0.3)
    for k in range(4):  # brute force: (1 + ε) times the farthest training row in the chart
        assert math.isclose(float(model.reach[k]), 1.3 * float(d[paper[:, k], k].max()), rel_tol=1e-6)
    assert torch.equal(model.membership(rows), paper)  # every training row keeps its charts
    far = 1e3 * torch.randn(20, 3)  # far from every code: the paper's rule makes it a member of (nearly) all
    with torch.no_grad():
        assert chart_membership(model.vq.distances(far), 2, 0.3).sum(1).float().mean() > 2.5
        assert not model.membership(far).any()
        assert torch.allclose(model.log_prob(far), model.background_log_density(far))
    plain = VQFlow((3,), num_charts=4, m=2, epsilon=0.3, chart_layers=2, hidden_features=8)  # no background:
    plain.load_state_dict(model.state_dict())  # the nearest chart keeps far points
    assert torch.equal(plain.membership(far), torch.nn.functional.one_hot(
        model.vq.distances(far).argmin(1), 4).bool())


def test_models_saved_before_the_reach_load_with_the_papers_rule():
    model = VQFlow((3,), num_charts=3, chart_layers=2, hidden_features=8)
    state = {k: v for k, v in model.state_dict().items() if k != "reach"}
    model.reach.fill_(1.0)
    model.load_state_dict(state)
    assert torch.equal(model.reach, model.unlimited_reach())


def test_samples_lie_in_their_own_chart_and_follow_the_normalised_atlas_density():
    """Rejection: E[x] and E[x²] of the samples equal ∫ x p / ∫ p on a grid (m = 1: mass well below 1)."""
    model = VQFlow((2,), num_charts=3, m=1, epsilon=0.3, chart_layers=3, hidden_features=16).double()
    _perturb(model.flow, 0.05)
    grid, cell = _grid(8.0, 241)
    with torch.no_grad():
        p = torch.exp(model.log_prob(grid)) * cell
        mass = float(p.sum())
        x, k, z = model.sample_charts(20000)
        proposals, proposal_k, _ = model.propose(20000)
    assert 0.05 < mass < 0.95
    assert model.in_own_chart(x, k).all() and not model.in_own_chart(proposals, proposal_k).all()
    assert torch.allclose(x, model.generate(z, k))
    for moment in (x, x**2):
        expected = (p[:, None] * (grid if moment is x else grid**2)).sum(0) / mass
        spread = moment.std(0) / math.sqrt(len(moment))
        assert ((moment.mean(0) - expected).abs() < 4 * spread + 0.01).all()
    kept_all = proposals.mean(0) - (p[:, None] * grid).sum(0) / mass  # without the rejection: off
    assert (kept_all.abs() > 4 * proposals.std(0) / math.sqrt(len(proposals))).any()


# --------------------------------------------------------------------------- parts
def test_conformal_embedding_is_a_similarity_with_left_inverse():
    c = ConditionalConformalEmbedding(2, 5, context_features=3, num_householder=3).double()
    _perturb(c, 0.5)
    u = torch.randn(7, 2, dtype=torch.float64)
    ctx = torch.randn(7, 3, dtype=torch.float64)
    x, half = c(u, ctx)
    u_back, half2 = c.project(x, ctx)
    assert torch.allclose(u_back, u, atol=1e-10) and torch.allclose(half, half2)
    for i in range(7):
        jac = torch.autograd.functional.jacobian(lambda uu, i=i: c(uu[None], ctx[i : i + 1])[0][0], u[i])
        s2 = torch.exp(half[i])  # half = d log s with d = 2
        assert torch.allclose(jac.T @ jac, s2 * torch.eye(2, dtype=torch.float64), atol=1e-10)


def test_vq_autoencoder_straight_through_and_dead_code_restart():
    vq = VQAutoencoder(3, num_codes=4, code_dim=2, restart_threshold=0.5, usage_decay=0.5)
    x = torch.randn(64, 3)
    loss, _ = vq.loss(x)
    loss.backward()
    # the reconstruction reaches the encoder through the straight-through estimator
    assert vq.encoder[0].weight.grad.abs().sum() > 0 and vq.codebook.grad is not None
    with torch.no_grad():
        vq.codebook[3] = 1e3  # a code no encoding is near: dead
    for _ in range(4):
        vq.loss(x)
    e = vq.encoder(x).detach()
    assert vq.restarts >= 1
    assert torch.cdist(vq.codebook[3:4].detach(), e).min() < 0.5


# --------------------------------------------------------------------------- data and metrics
@pytest.mark.parametrize("shape", ["linked_rings", "torus", "spheres"])
def test_toy3d_samples_lie_on_the_support_and_distance_is_exact(shape):
    gen = torch.Generator().manual_seed(0)
    x = sample_support(shape, 2000, gen)
    assert distance_to_support(shape, x).max() < 1e-12
    # moving a support point along a random direction by t changes the distance by at most t
    t = 0.01
    moved = x + t * torch.nn.functional.normalize(torch.randn(x.shape, generator=gen, dtype=x.dtype), dim=1)
    dist = distance_to_support(shape, moved)
    assert (dist <= t + 1e-12).all() and dist.mean() > 0.2 * t
    data = Toy3D(shape, n_train=100, n_test=50, noise=0.05)
    assert data.train_data().shape == (100, 3) and data.test_data().dtype == torch.float32


def test_toy3d_distance_known_points():
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    # the origin lies on ring 2 (centre (1,0,0), xz-plane); (0,0,0.5) is sqrt(1.25) from its centre, in its plane
    d = distance_to_support("linked_rings", pts)
    assert abs(float(d[0])) < 1e-12
    assert abs(float(d[1]) - (math.sqrt(1.25) - 1.0)) < 1e-12
    torus = distance_to_support("torus", torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(torus, torch.tensor([0.35, 0.65], dtype=torch.float64))


def test_frechet_distance_equals_direct_scipy_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 6)), rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.7
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert math.isclose(frechet_distance(mu1, s1, mu2, s2), ref, rel_tol=1e-8)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8


# --------------------------------------------------------------------------- end to end
def test_cli_train_sample_encode_evaluate_plot_on_toy3d(tmp_path, mflow):
    """A tiny VQ-Flow through every verb; encode writes chart, posterior and latents, each (N, ...)."""
    import h5py
    import yaml

    doc = {
        "name": "tiny_vq", "seed": 2, "threads": 1,
        "data": {"name": "toy3d", "shape": "spheres", "n_train": 300, "n_test": 100},
        "model": {"kind": "vq_flow", "num_charts": 3, "m": 2, "epsilon": 0.2, "chart_layers": 2, "hidden_features": 8,
                  "num_blocks": 1, "vq_hidden_features": 8},
        "train": {"epochs": {"vq": 1, "density": 1}, "batch_size": 100},
        "evaluate": {"n_samples": 100, "mass_samples": 200},
        "plot": {"n_samples": 100},
    }
    recipe = tmp_path / "tiny_vq.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    run_dir, samples, latents = tmp_path / "run", tmp_path / "s.h5", tmp_path / "z.h5"
    assert mflow("train", recipe, "--out", run_dir) == 0
    assert mflow("sample", run_dir, "-n", 120, "-o", samples, "--batch-size", 50) == 0
    assert mflow("encode", run_dir, samples, "-o", latents, "--batch-size", 50) == 0
    with h5py.File(latents) as fh:
        assert fh["latents"].shape == (120, 3) and fh["chart_posterior"].shape == (120, 3)
        assert fh["chart"].shape == (120,) and np.allclose(fh["chart_posterior"][:].sum(1), 1, atol=1e-5)
    assert mflow("evaluate", run_dir) == 0
    assert mflow("plot", run_dir) == 0
    assert (run_dir / "plots" / "samples.png").is_file()


def test_evaluator_fid_uses_a_cached_feature_classifier(tmp_path):
    from mflow_cli.metrics.vq_flow import AtlasEvaluation, evaluate_vq_flow

    model = VQFlow((3,), num_charts=3, chart_layers=2, hidden_features=8).eval()
    data = Toy3D("spheres", n_train=600, n_test=300)
    kw = dict(n_samples=200, mass_samples=200, fid=True, fid_samples=300, fid_cache_dir=str(tmp_path))
    first = evaluate_vq_flow(model, data, AtlasEvaluation(**kw))
    cached = list(tmp_path.glob("fid_classifier_*_kmeans.pt"))
    assert len(cached) == 1
    second = evaluate_vq_flow(model, data, AtlasEvaluation(**kw))  # same seed, classifier loaded from the cache
    fid, fid_again = first["frechet_feature_distance"], second["frechet_feature_distance"]
    assert fid is not None and fid > 0 and math.isclose(fid, fid_again, rel_tol=1e-9)
    assert first["mean_test_distance_to_support"] < first["mean_sample_distance_to_support"]
