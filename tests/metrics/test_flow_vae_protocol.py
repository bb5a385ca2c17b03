"""The flow-VAE reference protocol: the importance-weighted bounds of the evaluator against a brute-force
per-example, per-draw computation in float64 (one batch, and draws split into chunks), the standard error
formula, and the static binarization of MNIST (the same across constructions, independent of the split cuts,
different from the stochastic one); the experiment command on a tiny MNIST."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import write_tiny_mnist

from mflow_cli.app import runs
from mflow_cli.app.recipe import load_recipe
from mflow_cli.datasets.images_standard import MNIST
from mflow_cli.metrics.flow_vae import (
    METRICS,
    VariationalEvaluation,
    evaluate_flow_vae,
    importance_weighted_bounds,
    standard_error,
)
from mflow_cli.models.flow_vae import FlowVAE

torch.set_num_threads(1)


def tiny_model(flow: str = "planar") -> FlowVAE:
    torch.manual_seed(0)
    model = FlowVAE((1, 4, 4), latent_dim=2, posterior_flow=flow, posterior_layers=2, dynamic=flow == "planar",
                    hidden=[8], iaf_hidden=6).double().eval()
    with torch.no_grad():  # a flow far from its near-identity start, so the log-dets matter
        if model.dynamic:
            model.flow_head.weight.normal_(0, 0.5)
        for p in model.flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


def brute_force_log_w(model: FlowVAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log p(x, z_K) − log q_K(z_K|x) for one example x (D,) and each draw eps (S, d), one draw at a time."""
    h = model.encoder(x[None])
    mean, log_var = model.posterior_head(h).chunk(2, -1)
    if model.dynamic:
        params = model.flow_head(h)
    else:
        params = model.flow.params[None] if model.flow.params is not None else torch.zeros(1, 0, dtype=x.dtype)
    out = []
    for e in eps:
        z0 = mean + torch.exp(0.5 * log_var) * e[None]
        log_q0 = torch.distributions.Normal(mean, torch.exp(0.5 * log_var)).log_prob(z0).sum()
        z, logdet = z0, torch.zeros((), dtype=x.dtype)
        for step, p in zip(model.flow.steps, torch.split(params, model.flow.sizes, dim=-1), strict=True):
            z, ld = step(z, p, h)
            logdet = logdet + ld[0]
        logits = model.decoder(z)[0]
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
        out.append(log_px + log_pz - log_q0 + logdet)
    return torch.stack(out)


def _iw(log_w: torch.Tensor) -> float:
    """log (1/k) Σ exp(log_w), with the maximum taken out by hand."""
    top = float(log_w.max())
    return top + math.log(sum(math.exp(float(v) - top) for v in log_w)) - math.log(len(log_w))


@pytest.mark.parametrize("flow", ["planar", "iaf"])
@pytest.mark.parametrize("batch_size", [2000, 64])
def test_iw_bounds_match_brute_force_per_example(flow, batch_size):
    """k = 200 (and the first 50 of the same draws) vs every draw scored alone; batch_size 64 < k splits each
    example's draws into chunks 64, 64, 64, 8 joined by the running log-sum-exp."""
    model = tiny_model(flow)
    x = (torch.rand(5, 16, generator=torch.Generator().manual_seed(1)) < 0.4).double()
    torch.manual_seed(7)
    bounds = importance_weighted_bounds(model, x, [200, 50], batch_size)
    torch.manual_seed(7)  # the draws the evaluator made, in its order
    if batch_size >= 200 * len(x):
        eps = torch.randn(200, len(x), 2, dtype=torch.float64)
    else:
        per_example = [torch.cat([torch.randn(c, 1, 2, dtype=torch.float64)[:, 0] for c in (64, 64, 64, 8)])
                       for _ in range(len(x))]
        eps = torch.stack(per_example, 1)
    with torch.no_grad():
        for i in range(len(x)):
            log_w = brute_force_log_w(model, x[i], eps[:, i])
            assert math.isclose(float(bounds.iw[200][i]), _iw(log_w), rel_tol=0, abs_tol=1e-9)
            assert math.isclose(float(bounds.iw[50][i]), _iw(log_w[:50]), rel_tol=0, abs_tol=1e-9)
            assert math.isclose(float(bounds.elbo[i]), float(log_w[:50].mean()), rel_tol=0, abs_tol=1e-9)
    assert (bounds.iw[200] >= bounds.elbo).all()
    assert torch.allclose(bounds.elbo, bounds.reconstruction - bounds.kl, atol=1e-10)


def test_standard_error_is_std_over_root_n():
    values = torch.tensor([1.0, 2.0, 4.0, 7.0])  # mean 3.5, Σ(v − mean)² = 21, unbiased variance 7
    assert math.isclose(standard_error(values), math.sqrt(7) / 2, rel_tol=1e-12)
    assert standard_error(torch.tensor([3.0])) == 0.0


def test_evaluator_reports_the_standard_errors_and_both_bounds_of_the_same_draws():
    from helpers import TinyImages

    model = tiny_model().float()
    data = TinyImages(n_test=12, binarize="threshold", preprocessing="none", dequantize=False)
    options = VariationalEvaluation(iw_samples=20, tight_iw_samples=80, batch_size=100)
    metrics = evaluate_flow_vae(model, data, options)
    torch.manual_seed(options.seed)
    bounds = importance_weighted_bounds(model, data.test_data(), [20, 80], 100)
    assert math.isclose(metrics["test_iw_log_likelihood"], float(bounds.iw[20].mean()), rel_tol=1e-6)
    assert math.isclose(metrics["test_iw_log_likelihood_se"], standard_error(bounds.iw[20]), rel_tol=1e-6)
    assert math.isclose(metrics["test_tight_iw_log_likelihood_se"], standard_error(bounds.iw[80]), rel_tol=1e-6)
    assert math.isclose(metrics["test_elbo_se"], standard_error(bounds.elbo), rel_tol=1e-6)
    assert metrics["test_tight_iw_log_likelihood"] >= metrics["test_iw_log_likelihood"] - 0.5
    assert math.isclose(metrics["test_elbo"], metrics["test_reconstruction_log_likelihood"] - metrics["test_kl"],
                        rel_tol=1e-6)
    assert math.isclose(metrics["test_tight_iw_bits_per_dim"],
                        -metrics["test_tight_iw_log_likelihood"] / (16 * math.log(2)), rel_tol=1e-6)
    assert set(metrics) <= set(METRICS), set(metrics) - set(METRICS)
    assert {k for k, m in METRICS.items() if m.timing} == {"evaluation_seconds", "decoder_passes_per_s"}


def test_tight_iw_samples_below_iw_samples_is_refused():
    with pytest.raises(ValueError, match="^tight_iw_samples must be >= 200, got 100$"):
        VariationalEvaluation(iw_samples=200, tight_iw_samples=100)


# --------------------------------------------------------------------------- static binarization


@pytest.fixture
def tiny_mnist(tmp_path):
    return write_tiny_mnist(tmp_path / "mnist", 120, 40)


def test_static_binarization_is_fixed_and_differs_from_the_stochastic_one(tiny_mnist):
    a = MNIST(path=str(tiny_mnist), binarize="static", n_validation=20)
    b = MNIST(path=str(tiny_mnist), binarize="static", n_validation=20)
    for split in ("train_data", "validation_data", "test_data"):
        assert torch.equal(getattr(a, split)(), getattr(b, split)()), split
    train = a.train_data()
    assert train.shape == (100, 1, 28, 28) and a.validation_data().shape == (20, 1, 28, 28)
    assert set(train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.batch_transform(train[:30]), train[:30])  # fixed: every epoch sees the same pixels
    # Bernoulli(k/255) per pixel: the binary mean matches the gray mean within 4 binomial standard errors
    gray = torch.from_numpy(MNIST(path=str(tiny_mnist)).levels("train")[:100].numpy()).double() / 255
    assert abs(train.double().mean() - gray.mean()) < 4 * math.sqrt(0.25 / gray.numel())
    # an image keeps its pixels whatever the cuts: the validation split is the last rows of the full draw
    full = MNIST(path=str(tiny_mnist), binarize="static")
    assert torch.equal(full.train_data()[100:], a.validation_data())
    assert torch.equal(MNIST(path=str(tiny_mnist), binarize="static", n_train=10, n_validation=20).train_data(),
                       train[:10])
    assert not torch.equal(MNIST(path=str(tiny_mnist), binarize="static", seed=1).train_data()[:100], train)
    # the stochastic binarization draws new pixels in every batch (from the same gray levels)
    stochastic = MNIST(path=str(tiny_mnist), binarize="stochastic", n_validation=20)
    one, two = stochastic.batch_transform(stochastic.train_data()), stochastic.batch_transform(stochastic.train_data())
    assert not torch.equal(one, two) and not torch.equal(one, train)
    assert torch.equal(stochastic.test_data(), a.test_data())  # one fixed test draw for both: comparable scores


def test_n_validation_must_leave_training_images(tiny_mnist):
    with pytest.raises(ValueError, match="^n_validation must be below the 120 training images, got 120$"):
        MNIST(path=str(tiny_mnist), binarize="static", n_validation=120).train_data()
    with pytest.raises(ValueError, match="^n_validation must be >= 0, got -1$"):
        MNIST(path=str(tiny_mnist), n_validation=-1)
    assert MNIST(path=str(tiny_mnist)).validation_data().shape == (0, 1, 28, 28)


# --------------------------------------------------------------------------- the experiment command


def tiny_recipes(tmp_path, flows: tuple[str, ...], **model) -> list:
    """``recipes/flowvae_mnist40_none.yaml`` shrunk to a 2-D latent and 16 hidden units, once per posterior flow
    (2 steps unless none), written to ``tmp_path/tiny_FLOW.yaml``; ``model``: more model keys."""
    doc = yaml.safe_load(open("recipes/flowvae_mnist40_none.yaml"))
    paths = []
    for flow in flows:
        doc = {**doc, "name": f"tiny_{flow}",
               "model": {**doc["model"], "posterior_flow": flow, "posterior_layers": 2 * (flow != "none"),
                         "latent_dim": 2, "hidden": [16], "kl_warmup_steps": 4, **model}}
        path = tmp_path / f"tiny_{flow}.yaml"
        path.write_text(yaml.safe_dump(doc))
        paths.append(path)
    return paths


def test_experiment_trains_reuses_and_tabulates(tmp_path, tiny_mnist):
    from mflow_cli.experiments import flow_vae_mnist as experiment

    recipes = tiny_recipes(tmp_path, ("none", "iaf"), iaf_hidden=8)
    overrides = [f"data.path={tiny_mnist}", "data.n_validation=20", "train.epochs=2", "train.batch_size=50",
                 "evaluate.iw_samples=4", "evaluate.tight_iw_samples=16", "threads=1"]
    rows = experiment.run_experiment(recipes, overrides, tmp_path / "runs", tmp_path / "out", force=False)
    # data.n_validation holds validation rows out: the loop's held-out loss (val_loss) picks the best epoch
    assert [r.epochs for r in rows] == [2, 2] and all(r.best_epoch in (1, 2) for r in rows)
    table = (tmp_path / "out" / "table.md").read_text()
    assert " of 2" in table and "−log p(x), k = 16" in table
    stamp = (tmp_path / "runs" / "tiny_none" / "model.pt").stat().st_mtime_ns
    # a second call reuses the runs and the cached evaluations; evaluate.* overrides only rescore, and the run is
    # scored on any number of threads
    again = experiment.run_experiment(recipes[:1], overrides[:-2] + ["evaluate.tight_iw_samples=null", "threads=2"],
                                      tmp_path / "runs", tmp_path / "out", force=False)
    assert (tmp_path / "runs" / "tiny_none" / "model.pt").stat().st_mtime_ns == stamp
    assert "tight_iw_samples" not in again[0].metrics and again[0].metrics["iw_samples"] == 4
    assert experiment.best_validation_epoch([{"epoch": 1, "val_loss": 3.0}, {"epoch": 2, "val_loss": 2.0},
                                             {"epoch": 3, "val_loss": 2.5}]) == 2
    minutes = experiment.training_minutes([{"time": 0.0}, {"time": 60.0}, {"time": 120.0}, {"time": 9000.0},
                                           {"time": 9060.0}])
    assert math.isclose(minutes, 5.0)  # 4 gaps of one minute (the stop counts as one) + the first epoch


def test_cost_mode_times_each_recipe_without_training(tmp_path, tiny_mnist):
    """``--cost`` builds each recipe's model, times a step and the k = 200 bound, and writes cost.md; the epoch
    and budget columns are the step time scaled by the 50,000 training images and the recipe's epochs."""
    from mflow_cli.experiments import flow_vae_mnist as experiment

    doc = yaml.safe_load(open("recipes/flowvae_mnist40_sylvester_orthogonal.yaml"))
    doc = {**doc, "name": "tiny_sylvester", "model": {**doc["model"], "latent_dim": 4, "hidden": [16],
                                                       "posterior_layers": 2, "sylvester_columns": 2}}
    path = tmp_path / "sylvester.yaml"
    path.write_text(yaml.safe_dump(doc))
    overrides = [f"data.path={tiny_mnist}", "train.epochs=7", "train.batch_size=20", "threads=1"]
    (row,) = experiment.cost_rows([path], overrides, steps=2, rounds=1)
    model = runs.build_model(load_recipe(path, overrides), (1, 28, 28))
    assert row.parameters == sum(p.numel() for p in model.parameters())
    assert row.step_ms > 0 and row.iw_seconds_per_1000 > 0
    assert math.isclose(row.epoch_seconds, row.step_ms / 1e3 * 2500) and math.isclose(
        row.budget_hours, row.epoch_seconds * 7 / 3600)
    experiment.main([str(path), "--cost", "--out", str(tmp_path / "out"), *(f"--set={o}" for o in overrides[:-1])])
    table = (tmp_path / "out" / "cost.md").read_text()
    assert "`tiny_sylvester`" in table and "ms / training step" in table
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out" / "table.md").exists()


def test_jobs_train_each_recipe_in_its_own_process_then_tabulate(tmp_path, tiny_mnist):
    """``--jobs 2``: both recipes trained and scored by worker processes (their logs kept), the table written
    once by the parent from the workers' runs and cached evaluations; a bad recipe stops everything first."""
    from mflow_cli.experiments import flow_vae_mnist as experiment

    recipes = [str(path) for path in tiny_recipes(tmp_path, ("none", "planar"))]
    sets = [f"--set={o}" for o in (f"data.path={tiny_mnist}", "data.n_validation=20", "train.epochs=1",
                                   "train.batch_size=50", "evaluate.iw_samples=4", "evaluate.tight_iw_samples=8")]
    out, runs_dir = tmp_path / "out", tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "mflow_cli.experiments.flow_vae_mnist", *recipes, "--jobs", "2",
                           "--runs", str(runs_dir), "--out", str(out), *sets], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("tiny_none", "tiny_planar"):
        assert (runs_dir / name / "model.pt").is_file() and (out / "evaluations" / f"{name}.json").is_file()
        assert "−log p(x) ≤" in (out / "logs" / f"{name}.log").read_text()
    table = (out / "table.md").read_text()
    assert table.count("| none") == 1 and table.count("| planar") == 1
    with pytest.raises(SystemExit) as stop:
        experiment.main([*recipes, "--jobs", "2", "--runs", str(runs_dir), "--out", str(out), *sets,
                         "--set=data.path=/nonexistent.npz", "--force"])
    assert stop.value.code == 2  # validated before any worker starts


def test_scoring_flushes_subnormals_and_restores_the_setting(tmp_path, tiny_mnist, monkeypatch):
    """The experiment's table and paired scores and ``mflow evaluate`` compute their bounds with subnormal floats
    flushed to zero (a trained VAE's activations reach them, and x86 computes them slowly: the plain VAE's
    k = 200 bound took twice as long without), and leave the setting as they found it."""
    from mflow_cli.experiments import flow_vae_mnist as experiment
    from mflow_cli.metrics import flow_vae
    from mflow_cli.training import flushes_subnormals

    seen: list[bool] = []
    bounds = flow_vae.importance_weighted_bounds

    def recording(*args, **kwargs):
        seen.append(flushes_subnormals())
        return bounds(*args, **kwargs)

    monkeypatch.setattr(flow_vae, "importance_weighted_bounds", recording)
    recipes = tiny_recipes(tmp_path, ("none",))
    overrides = [f"data.path={tiny_mnist}", "data.n_validation=20", "train.epochs=1", "train.batch_size=50",
                 "evaluate.iw_samples=4", "evaluate.tight_iw_samples=null", "threads=1"]
    torch.set_flush_denormal(False)
    experiment.run_experiment(recipes, overrides, tmp_path / "runs", tmp_path / "out", force=False)
    experiment.run_paired(recipes, overrides, tmp_path / "runs", tmp_path / "out", seed=3)
    scored = len(seen)
    runs.evaluate_run(tmp_path / "runs" / "tiny_none")
    assert scored >= 2 and len(seen) > scored and set(seen) == {True}
    assert not flushes_subnormals() and float(torch.tensor([1e-39]) * 2.0) > 0


def test_paired_mode_scores_every_test_image_and_reports_the_paired_gain(tmp_path, tiny_mnist):
    """``--paired``: per-image k = 200 bounds of each trained run (cached while the model holds), the gain as the
    mean per-image difference from the plain VAE with std / √n of those differences, and the share scored higher."""
    from mflow_cli.experiments import flow_vae_mnist as experiment
    from mflow_cli.metrics.flow_vae import batched_bounds

    recipes = tiny_recipes(tmp_path, ("none", "planar"))
    overrides = [f"data.path={tiny_mnist}", "data.n_validation=20", "train.epochs=1", "train.batch_size=50",
                 "evaluate.tight_iw_samples=null", "threads=1"]
    with pytest.raises(experiment.ConfigError, match="flowvae_mnist40_none"):  # nothing trained: no plain VAE
        experiment.run_paired(recipes, overrides, tmp_path / "runs", tmp_path / "out", seed=3)
    experiment.run_experiment(recipes, overrides, tmp_path / "runs", tmp_path / "out", force=False)
    table = experiment.run_paired(recipes, overrides, tmp_path / "runs", tmp_path / "out", seed=3)
    assert (tmp_path / "out" / "paired.md").read_text() == table
    assert (tmp_path / "out" / "paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the gains against size

    cached = {flow: torch.load(tmp_path / "out" / "paired" / f"tiny_{flow}.pt", weights_only=True)["bounds"]
              for flow in ("none", "planar")}
    _, model = runs.load_run(tmp_path / "runs" / "tiny_none")
    torch.manual_seed(3)
    test = runs.build_dataset(load_recipe(recipes[0], overrides)).test_data()
    _, expected = batched_bounds(model, test, 200, 5000)
    assert len(cached["none"]) == len(test) and torch.allclose(cached["none"], expected.double(), atol=1e-4)
    diff = cached["planar"] - cached["none"]
    row = next(line for line in table.splitlines() if line.startswith("| planar"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == f"{float(diff.mean()):+.2f}".replace("-", "−")
    assert cells[3] == f"{float(diff.std() / len(diff) ** 0.5):.2f}"
    assert cells[4] == f"{100 * float((diff > 0).double().mean()):.1f}%"

    stamp = (tmp_path / "out" / "paired" / "tiny_none.pt").stat().st_mtime_ns
    assert experiment.run_paired(recipes, overrides, tmp_path / "runs", tmp_path / "out", seed=3) == table
    assert (tmp_path / "out" / "paired" / "tiny_none.pt").stat().st_mtime_ns == stamp  # reused, not rescored
    against_planar = experiment.run_paired(recipes, overrides, tmp_path / "runs", tmp_path / "out", seed=3,
                                           baseline="tiny_planar")
    row = next(line for line in against_planar.splitlines() if line.startswith("| none"))
    assert [c.strip() for c in row.split("|")[1:-1]][2] == f"{-float(diff.mean()):+.2f}".replace("-", "−")  # U+2212
    assert (tmp_path / "out" / "paired_tiny_planar.md").read_text() == against_planar
    assert (tmp_path / "out" / "paired_tiny_planar.png").is_file()
    with pytest.raises(experiment.ConfigError, match="tiny_radial"):
        experiment.run_paired(recipes, overrides, tmp_path / "runs", tmp_path / "out", seed=3, baseline="tiny_radial")


@pytest.mark.parametrize("path", sorted(Path("recipes").glob("flowvae_mnist40_*.yaml")), ids=lambda p: p.stem)
def test_paper_scale_recipes_state_their_parameter_count(path, tiny_mnist):
    """Each ``flowvae_mnist40_*`` recipe's "Parameters: X M in all" comment is its model's count (to 0.01 M),
    so the equal-size comparisons the comments claim hold."""
    stated = re.search(r"^# Parameters: ([0-9.]+) M in all", path.read_text(), re.MULTILINE)
    assert stated, f"{path} states no parameter count"
    model = runs.build_model(load_recipe(path, [f"data.path={tiny_mnist}"]), (1, 28, 28))
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6, 2) == float(stated.group(1)), (path.stem, count)
