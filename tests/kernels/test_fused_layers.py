"""mflow's fused layers against nflows' own: the functional ResidualNet conditioner and FusedLULinear's inverse
(float64: values and gradients to 1e-12), the whole pass of a coupling stack as one node (flow_pass), and one
DNF training step on the fused path against the reference path."""

from __future__ import annotations

import pytest
import torch
from nflows import transforms as T
from nflows.nn.nets import ResidualNet

from mflow_cli import kernels
from mflow_cli.flows.builders import coupling_flow
from mflow_cli.flows.fused import FusedLULinear, _PassProgram, conditioner, flow_pass
from mflow_cli.kernels.functions import FlowPassFn
from mflow_cli.models.manifold_flow import ManifoldFlow


def _grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_functional_conditioner_matches_the_module(dropout):
    torch.manual_seed(0)
    net = ResidualNet(3, 7, hidden_features=16, num_blocks=2, dropout_probability=dropout).double()
    x = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    got = conditioner(net, x)
    torch.manual_seed(1)
    want = net(x)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    params = [x, *net.parameters()]
    for a, b in zip(_grads(got.pow(2).sum(), params), _grads(want.pow(2).sum(), params), strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def _net_params(net: ResidualNet) -> list[torch.Tensor]:
    return [net.initial_layer.weight, net.initial_layer.bias,
            *(t for b in net.blocks for lin in b.linear_layers for t in (lin.weight, lin.bias)),
            net.final_layer.weight, net.final_layer.bias]


@pytest.mark.skipif(not kernels.extension_loaded(), reason="mflow_cli._C not built")
@pytest.mark.parametrize("blocks", [1, 3])
def test_compiled_residual_net_passes_gradcheck_and_matches_the_module(blocks):
    """kernels.residual_net (one autograd node, C++ backward): float64 gradcheck over the input and every weight."""
    torch.manual_seed(5)
    net = ResidualNet(3, 5, hidden_features=6, num_blocks=blocks).double()
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    params = _net_params(net)
    out = kernels.residual_net(x, params)
    assert out is not None and out.grad_fn is not None and "ResidualNetFn" in type(out.grad_fn).__name__
    assert torch.allclose(out, net(x), atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda x, *p: kernels.residual_net(x, list(p)), (x, *params))
    with torch.no_grad():  # nothing to record: the caller runs the layers itself
        assert kernels.residual_net(x, params) is None


def test_lu_inverse_matches_nflows():
    torch.manual_seed(2)
    fused = FusedLULinear(5, identity_init=False).double()
    plain = T.LULinear(5, identity_init=False).double()
    plain.load_state_dict(fused.state_dict())
    y = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    got, got_ld = fused.inverse(y)
    want, want_ld = plain.inverse(y)
    assert torch.allclose(got, want, atol=1e-12, rtol=0) and torch.allclose(got_ld, want_ld, atol=1e-12, rtol=0)
    assert torch.allclose(fused(got)[0], y, atol=1e-10, rtol=0)  # a round trip
    for a, b in zip(_grads((got**2).sum() + got_ld.sum(), [y, *fused.parameters()]),
                    _grads((want**2).sum() + want_ld.sum(), [y, *plain.parameters()]), strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.skipif(not kernels.extension_loaded(), reason="mflow_cli._C not built")
@pytest.mark.parametrize("features", [2, 5, 20])  # 2, 5: the CPU loops; 20: the ATen branch
@pytest.mark.parametrize("inverse", [False, True])
def test_compiled_lu_layer_matches_nflows_and_passes_gradcheck(features, inverse):
    """kernels.lu_linear (one autograd node, C++ backward) against nflows' LULinear, float64, both directions."""
    torch.manual_seed(8)
    fused = FusedLULinear(features, identity_init=False).double()
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.3 * torch.randn_like(p))
    plain = T.LULinear(features, identity_init=False).double()
    plain.load_state_dict(fused.state_dict())
    y = torch.randn(6, features, dtype=torch.float64, requires_grad=True)

    def run(layer):
        return layer.inverse(y) if inverse else layer(y)

    (out, logdet), (ref, ref_logdet) = run(fused), run(plain)
    assert "LULinearFn" in type(out.grad_fn).__name__
    assert torch.allclose(out, ref, atol=1e-12, rtol=0) and torch.allclose(logdet, ref_logdet, atol=1e-12, rtol=0)
    for a, b in zip(_grads((out**2).sum() + 3 * logdet.sum(), [y, *fused.parameters()]),
                    _grads((ref**2).sum() + 3 * ref_logdet.sum(), [y, *plain.parameters()]), strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)
    params = [y, fused.lower_entries, fused.upper_entries, fused.unconstrained_upper_diag, fused.bias]

    def layer_fn(v, lower, upper, diag, bias):
        return kernels.lu_linear(v, lower, upper, diag, bias, fused._lower_flat, fused._upper_flat, fused.eps, inverse)

    assert torch.autograd.gradcheck(layer_fn, params)


@pytest.mark.skipif(not kernels.extension_loaded(), reason="mflow_cli._C not built")
@pytest.mark.parametrize("inverse", [False, True])
def test_a_whole_rq_coupling_step_as_one_node_matches_nflows_and_passes_gradcheck(inverse):
    """kernels.rq_coupling_step (conditioner and spline in one autograd node) against nflows' coupling layer,
    float64: values, log-dets, gradients of input and weights; and gradcheck."""
    from mflow_cli.flows.builders import coupling_flow
    from mflow_cli.flows.fused import FusedRQCouplingTransform, _one_node_params

    torch.manual_seed(9)
    flow = coupling_flow(5, 1, hidden_features=6, num_blocks=2).double()
    step = next(m for m in flow.modules() if isinstance(m, FusedRQCouplingTransform))
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = (1.5 * torch.randn(7, 5, dtype=torch.float64)).requires_grad_()
    out, logdet = step.inverse(x) if inverse else step(x)
    assert "RQCouplingStepFn" in type(out.grad_fn).__name__
    with kernels.use_reference():
        ref, ref_logdet = step.inverse(x) if inverse else step(x)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0) and torch.allclose(logdet, ref_logdet, atol=1e-11, rtol=0)
    params = [x, *step.parameters()]
    for a, b in zip(_grads((out**2).sum() + logdet.sum(), params), _grads((ref**2).sum() + ref_logdet.sum(), params),
                    strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)
    net_params = _one_node_params(step.transform_net)
    spline = (step.num_bins, step.tail_bound, step.min_bin_width, step.min_bin_height, step.min_derivative,
              step._divisor())

    def step_fn(v, *p):
        return kernels.rq_coupling_step(v, step.identity_features, step.transform_features, list(p), inverse, *spline)

    assert torch.autograd.gradcheck(step_fn, (x, *net_params))


def test_training_step_loss_and_gradients_match_the_reference_path():
    torch.manual_seed(3)
    model = ManifoldFlow((2,), outer_layers=3, hidden_features=16).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    params = list(model.parameters())

    def loss_and_grads():
        torch.manual_seed(4)
        loss, _ = model.loss(x, "joint")
        return loss.detach(), _grads(loss, params)

    loss, grads = loss_and_grads()
    with kernels.use_reference():
        ref_loss, ref_grads = loss_and_grads()
    assert torch.allclose(loss, ref_loss, atol=1e-10, rtol=0)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-8, rtol=1e-8)


def test_image_flow_on_the_fused_paths_matches_nflows_own_layers():
    """The image flow's RQ couplings on 4-D inputs (one kernel row per pixel) and its channels-last conditioners
    against nflows' spline and NCHW convolutions (``use_reference``): values, log-dets, gradients (float64), and
    a round trip."""
    from mflow_cli.flows.image import image_flow

    torch.manual_seed(6)
    flow = image_flow((3, 8, 8), 2, levels=2, hidden_channels=8, num_blocks=1, latent_dim=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = (torch.rand(4, 192, dtype=torch.float64) - 0.5).requires_grad_()
    params = [x, *flow.parameters()]

    def run():
        y, logdet = flow(x)
        return y, logdet, _grads((y**2).sum() + logdet.sum(), params)

    y, logdet, grads = run()
    with kernels.use_reference():
        ref_y, ref_logdet, ref_grads = run()
    assert torch.allclose(y, ref_y, atol=1e-12, rtol=0) and torch.allclose(logdet, ref_logdet, atol=1e-11, rtol=0)
    assert float(logdet.detach().abs().max()) > 0.1
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)
    assert torch.allclose(flow.inverse(y)[0], x, atol=1e-10, rtol=0)


def test_channels_last_conditioner_matches_nchw():
    from nflows.nn.nets import ConvResidualNet

    from mflow_cli.flows.image import ChannelsLastConvResidualNet

    torch.manual_seed(7)
    fast = ChannelsLastConvResidualNet(4, 6, hidden_channels=8, num_blocks=2).double()
    plain = ConvResidualNet(4, 6, hidden_channels=8, num_blocks=2).double()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    out = fast(x)
    assert out.is_contiguous() and torch.allclose(out, plain(x), atol=1e-12, rtol=0)


def _perturbed_flow(features: int, layers: int, **kwargs) -> T.Transform:
    """A float64 coupling flow with every parameter moved off its (near-identity) start."""
    torch.manual_seed(0)
    flow = coupling_flow(features, layers, hidden_features=12, **kwargs).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


needs_ext = pytest.mark.skipif(not kernels.extension_loaded(), reason="mflow_cli._C not built")


@needs_ext
@pytest.mark.parametrize("features,layers,kwargs", [
    (2, 3, {}), (5, 2, {"spline_bins": 8, "num_blocks": 1}), (4, 2, {"linear": "permutation", "num_blocks": 3}),
])
@pytest.mark.parametrize("inverse", [False, True])
def test_whole_pass_as_one_node_matches_nflows_layers(features, layers, kwargs, inverse):
    """flow_pass: one FlowPassFn node for the whole stack; values, log-det and the gradients of x and of every
    parameter equal nflows' own layers (the reference path) to 1e-10 in float64."""
    flow = _perturbed_flow(features, layers, **kwargs)
    x = (1.5 * torch.randn(9, features, dtype=torch.float64)).requires_grad_()
    weights = torch.randn(9, features, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    params = [x, *flow.parameters()]

    def run(reference: bool):
        with kernels.use_reference(reference):
            y, logdet = flow_pass(flow, x, inverse)
        loss = (y * weights[0]).sum() + (logdet * weights[1]).sum()
        return y, logdet, torch.autograd.grad(loss, params)

    y, logdet, grads = run(False)
    assert type(y.grad_fn) is FlowPassFn._backward_cls and y.grad_fn.next_functions[0][0] is not None
    ref_y, ref_logdet, ref_grads = run(True)
    assert type(ref_y.grad_fn) is not FlowPassFn._backward_cls
    assert torch.allclose(y, ref_y, atol=1e-12, rtol=0) and torch.allclose(logdet, ref_logdet, atol=1e-12, rtol=0)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@needs_ext
@pytest.mark.parametrize("inverse", [False, True])
def test_whole_pass_node_passes_gradcheck(inverse):
    flow = _perturbed_flow(3, 2, num_blocks=1)
    program = _PassProgram(flow, inverse)
    params = [table[name].detach().clone().requires_grad_() for table, name in program.sources]
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, *params):
        return FlowPassFn.apply(x, inverse, program.program, *params)

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


@needs_ext
def test_whole_pass_falls_back_where_it_does_not_apply_and_follows_loaded_weights():
    """Active dropout, torch.func transforms and a loaded state (new permutations) all give nflows' answer."""
    flow = _perturbed_flow(4, 2, dropout=0.3)
    x = torch.randn(6, 4, dtype=torch.float64)
    flow.train()
    torch.manual_seed(1)
    y, _ = flow_pass(flow, x)
    torch.manual_seed(1)
    assert type(y.grad_fn) is not FlowPassFn._backward_cls and torch.equal(y, flow(x)[0])
    flow.eval()
    y, logdet = flow_pass(flow, x)
    assert type(y.grad_fn) is FlowPassFn._backward_cls and torch.allclose(y, flow(x)[0], atol=1e-12)
    assert torch.allclose(flow_pass(flow, x, inverse=True)[0], flow.inverse(x)[0], atol=1e-12)

    def first(v):
        return flow_pass(flow, v)[0]

    out, tangent = torch.func.jvp(first, (x,), (torch.ones_like(x),))
    assert torch.allclose(out, y, atol=1e-12) and torch.isfinite(tangent).all()

    torch.manual_seed(5)  # another draw of the weights and of the random permutations
    other = coupling_flow(4, 2, hidden_features=12, dropout=0.3).double().eval()
    perms = [k for k in other.state_dict() if k.endswith("_permutation")]
    assert any(not torch.equal(flow.state_dict()[k], other.state_dict()[k]) for k in perms)
    flow.load_state_dict(other.state_dict())  # written in place: the compiled inverse permutations go stale
    assert torch.allclose(flow_pass(flow, x)[0], other(x)[0], atol=1e-12)
    assert torch.allclose(flow_pass(flow, x, inverse=True)[0], other.inverse(x)[0], atol=1e-12)


@needs_ext
def test_malformed_whole_pass_program_is_refused():
    x = torch.randn(3, 2)
    with pytest.raises(RuntimeError, match="malformed program"):
        kernels.ext.flow_pass_forward(x, False, [2], [torch.arange(1)], [1, 5], [3.0, 1e-3, 1e-3, 1e-3, 1.0], True)
    with pytest.raises(RuntimeError, match="unknown step kind"):
        kernels.ext.flow_pass_forward(x, False, [7], [], [], [], True)


@needs_ext
@pytest.mark.parametrize("inverse", [False, True])
def test_whole_pass_without_a_gradient_keeps_nothing_and_gives_the_same_values(inverse):
    """No gradient to come: the native pass runs without saving activations (no node), same values; 0 rows work."""
    flow = _perturbed_flow(3, 2)
    x = torch.randn(7, 3, dtype=torch.float64)
    with torch.no_grad():
        y, logdet = flow_pass(flow, x, inverse)
        empty_y, empty_logdet = flow_pass(flow, x[:0], inverse)
    recorded_y, recorded_logdet = flow_pass(flow, x, inverse)
    assert y.grad_fn is None and type(recorded_y.grad_fn) is FlowPassFn._backward_cls
    assert torch.equal(y, recorded_y.detach()) and torch.equal(logdet, recorded_logdet.detach())
    assert empty_y.shape == (0, 3) and empty_logdet.shape == (0,)
