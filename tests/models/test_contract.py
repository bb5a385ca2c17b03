"""One contract for every model kind of the catalog: finite losses, gradients on exactly the phase's parameters,
sample/encode shapes, and save -> load -> the same outputs; on ``--device`` (``pytest --device cuda``)."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyImages

from mflow_cli.app import catalog, runs
from mflow_cli.app.recipe import validate
from mflow_cli.datasets.spiral import ThinSpiral
from mflow_cli.datasets.toy3d import Toy3D

MANIFOLD = {"outer_layers": 2, "hidden_features": 8, "num_blocks": 1}
TINY_KINDS = {
    "dnf": MANIFOLD,
    "mflow": MANIFOLD,
    "pie": MANIFOLD,
    "ambient_flow": MANIFOLD,
    "me_flow": {**MANIFOLD, "encoder_hidden": 8, "encoder_blocks": 1},
    "pae": {"hidden_features": 8, "num_blocks": 1, "inner_hidden_features": 8},
    "infomax_vae": {"latent_dim": 1, "hidden_features": 8, "num_blocks": 1, "discriminator_hidden": [8]},
    "flow_vae": {"latent_dim": 2, "hidden": [8], "posterior_flow": "planar", "posterior_layers": 2},
    "dynamic_flow_vae": {"latent_dim": 2, "hidden": [8], "posterior_flow": "radial", "posterior_layers": 2},
    "conv_flow_vae": {"latent_dim": 2, "hidden": [8], "conv_channels": [2, 4], "posterior_flow": "planar",
                      "posterior_layers": 1},
    "vq_flow": {"num_charts": 2, "chart_layers": 1, "hidden_features": 8, "vq_hidden_features": 8},
    "classic_flow": {"chart_layers": 1, "hidden_features": 8},
}


def data_for(kind: str) -> tuple[str, object]:
    family = catalog.MODELS[kind].evaluation
    if family is catalog.VARIATIONAL:
        return "tiny images", TinyImages(binarize="threshold", preprocessing="none", dequantize=False)
    if family is catalog.ATLAS:
        return "toy3d", Toy3D("spheres", n_train=64, n_test=32)
    return "thin_spiral", ThinSpiral(n_train=64, n_test=32)


def test_every_catalog_kind_has_a_tiny_configuration():
    assert set(TINY_KINDS) == set(catalog.MODELS)


@pytest.fixture(params=sorted(TINY_KINDS))
def built(request, device):
    kind = request.param
    _, dataset = data_for(kind)
    torch.manual_seed(0)
    model = catalog.MODELS[kind].build(dataset.data_shape, **TINY_KINDS[kind]).to(device)
    return kind, model, dataset


def test_losses_are_finite_and_gradients_reach_exactly_the_phase_parameters(built, device):
    kind, model, dataset = built
    x = dataset.train_data()[:32].to(device)
    model.train()
    for phase in model.phases():
        for p in model.parameters():
            p.grad = None
        torch.manual_seed(1)
        loss, logs = model.loss(x, phase)
        assert torch.isfinite(loss) and all(map(lambda v: v == v, logs.values())), (kind, phase, logs)
        loss.backward()
        inside = {id(p) for p in model.phase_parameters(phase)}
        reached = [p for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert reached, f"{kind} {phase}: no gradient at all"
        outside = [n for n, p in model.named_parameters() if id(p) not in inside and p.grad is not None
                   and p.grad.abs().sum() > 0]
        assert not outside, f"{kind} {phase}: gradients outside the phase's parameters: {outside[:3]}"


def test_sample_and_encode_shapes(built, device):
    kind, model, dataset = built
    model.eval()
    torch.manual_seed(2)
    samples = model.sample(5)
    assert tuple(samples.shape) == (5, *dataset.data_shape) and torch.isfinite(samples).all()
    assert samples.device.type == device.type
    out = model.encode(dataset.test_data()[:7].to(device))
    assert out["latents"].shape == (7, model.latent_dim), kind
    assert all(v.shape[0] == 7 for v in out.values()), kind


def test_save_load_gives_the_same_outputs(tmp_path, built, device):
    kind, model, dataset = built
    name, _ = data_for(kind)
    data = {"name": name, "n_train": 64, "n_test": 32} | ({"shape": "spheres"} if name == "toy3d" else {})
    if name == "tiny images":  # any image dataset name will do: building the model needs only the data shape
        data = {"name": "mnist", "path": str(tmp_path)}
    recipe = validate({"name": "contract", "data": data, "model": {"kind": kind, **TINY_KINDS[kind]}}, "contract")
    model = runs.build_model(recipe, dataset.data_shape).to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    (tmp_path / "run").mkdir()
    runs.save_model(model, recipe, dataset.data_shape, tmp_path / "run" / "model.pt")
    loaded = runs.open_run(tmp_path / "run", device=str(device)).model
    x = dataset.test_data()[:9].to(device)
    results = []
    for m in (model, loaded):
        torch.manual_seed(3)
        encoded = {k: v.detach() for k, v in m.encode(x).items()}
        torch.manual_seed(4)
        results.append((encoded, m.sample(4)))
    (before, drawn_before), (after, drawn_after) = results
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(drawn_after, drawn_before, rtol=1e-5, atol=1e-5)
