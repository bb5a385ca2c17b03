"""Latent flows on a VAE's draws z (S, B, d): per-input parameters and context broadcast over the S draws give
exactly what the flow gives each draw as its own row with the parameters repeated (float64), for every kind,
static and amortised; and the flow-VAE's weights of S draws match S single-draw weights with the same noise."""

from __future__ import annotations

import pytest
import torch

from mflow_cli.flows.latent import LatentFlow, SylvesterStep, per_input_matmul
from mflow_cli.models.flow_vae import FlowVAE

KINDS = ["planar", "radial", "householder", "nice", "iaf", "sylvester_orthogonal", "sylvester_householder",
         "sylvester_triangular"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_draws_broadcast_like_repeated_rows(kind, dynamic):
    torch.manual_seed(3)
    s, b, d, h = 4, 3, 5, 6
    flow = LatentFlow(kind, d, 3, dynamic=dynamic, nice_hidden=7, iaf_hidden=8, context_features=h,
                      sylvester_columns=3).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    z = torch.randn(s, b, d, dtype=torch.float64)
    context = torch.randn(b, h, dtype=torch.float64)
    params = torch.randn(b, flow.num_params, dtype=torch.float64) if flow.dynamic else None
    out, logdet = flow(z, params, context)
    rows = None if params is None else params.repeat(s, 1)
    expected, expected_logdet = flow(z.reshape(s * b, d), rows, context.repeat(s, 1))
    assert out.shape == (s, b, d) and logdet.shape == (s, b)
    assert torch.allclose(out, expected.reshape(s, b, d), atol=1e-12, rtol=0)
    assert torch.allclose(logdet, expected_logdet.reshape(s, b), atol=1e-12, rtol=0)
    assert (out - z).abs().max() > 1e-2


@pytest.mark.parametrize("variant", ["orthogonal", "householder", "triangular"])
def test_sylvester_step_folds_q_for_many_draws_and_gives_the_same_map(variant):
    torch.manual_seed(4)
    b, d = 3, 5
    step = SylvesterStep(d, variant, columns=3, reflections=2, index=1).double()
    params = torch.randn(b, step.num_params, dtype=torch.float64)
    z = torch.randn(d, b, d, dtype=torch.float64)  # S = d draws: Q folded into R and R̃ once per input
    assert step.folds_q(z) and not step.folds_q(z[:1]) and not step.folds_q(z[0])
    out, logdet = step(z, params)
    for s in range(d):  # one draw at a time: the factors applied in turn
        out_s, logdet_s = step(z[s], params)
        assert torch.allclose(out[s], out_s, atol=1e-12, rtol=0)
        assert torch.allclose(logdet[s], logdet_s, atol=1e-12, rtol=0)
    assert (out - z).abs().max() > 1e-2


def test_per_input_matmul_is_each_rows_own_product():
    torch.manual_seed(0)
    z, matrices = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(3, 5, 2, dtype=torch.float64)
    expected = torch.stack([torch.stack([z[i, j] @ matrices[j] for j in range(3)]) for i in range(4)])
    assert torch.allclose(per_input_matmul(z, matrices), expected, atol=1e-12)
    assert torch.allclose(per_input_matmul(z, matrices[:1]), z @ matrices[0], atol=1e-12)
    assert torch.allclose(per_input_matmul(z[0], matrices), expected[0], atol=1e-12)  # no draw dimension


@pytest.mark.parametrize("kind", ["sylvester_orthogonal", "iaf", "nice"])
def test_log_weights_of_many_draws_match_single_draws(kind):
    torch.manual_seed(1)
    model = FlowVAE((1, 4, 4), latent_dim=4, posterior_flow=kind, posterior_layers=2, dynamic=kind == "nice",
                    hidden=[8], nice_hidden=5, iaf_hidden=6).double()
    x = (torch.rand(3, 16) < 0.5).double()
    torch.manual_seed(2)
    many = model.log_weights(x, 6)
    torch.manual_seed(2)
    eps = torch.randn(6, 3, 4, dtype=torch.float64)
    mean, log_var, params, h = model.posterior(x)
    for i in range(6):
        z0 = mean + torch.exp(0.5 * log_var) * eps[i]
        assert torch.allclose(many["z0"][i], z0, atol=1e-12)
        zk, logdet = model.flow(z0, params, h)
        assert torch.allclose(many["z"][i], zk, atol=1e-12) and torch.allclose(many["logdet"][i], logdet, atol=1e-12)
        assert torch.allclose(many["log_px_z"][i], model.log_likelihood(x, zk), atol=1e-10)
