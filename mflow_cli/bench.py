"""Side-by-side timings of the fused kernels (``mflow_cli._C``) and the pure-PyTorch reference path.

Both paths run in the same process on the same inputs: the reference inside
:func:`mflow_cli.kernels.use_reference`, which is also how the fused coupling layers fall back to
nflows' own transforms. Each row is the median of ``repeats`` timed calls after warm-up (the two
paths alternating call by call, so that load changes hit both alike), for the
forward pass and for forward + backward, with the largest absolute difference between the two
paths' results (outputs for ``fwd``, outputs and input/parameter gradients for ``fwd+bwd``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from . import kernels


@dataclass
class BenchRow:
    kernel: str
    size: str
    mode: str  # "fwd" or "fwd+bwd"
    reference_ms: float
    fused_ms: float
    max_abs_diff: float

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.fused_ms


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_median_ms(
    fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 2
) -> tuple[float, float]:
    """Median times of ``fn()`` on the reference path and on the fused path, in milliseconds.

    The two paths alternate call by call, so a change of machine load hits both alike.
    """
    for _ in range(warmup):
        with kernels.use_reference():
            fn()
        fn()
    ref, fused = [], []
    for _ in range(max(1, repeats)):
        for use_ref, times in ((True, ref), (False, fused)):
            with kernels.use_reference(use_ref):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(ref), 1e3 * statistics.median(fused)


def _max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b, strict=True))


def _compare(
    kernel: str, size: str, fn: Callable[..., Sequence[torch.Tensor]], inputs: Sequence[torch.Tensor],
    repeats: int, device: torch.device,
) -> list[BenchRow]:
    """fwd and fwd+bwd rows for ``fn(*inputs)`` (returns a tuple of tensors), reference vs fused."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    gen = torch.Generator(device="cpu").manual_seed(0)

    def weights(outs):
        return [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(device) for o in outs]

    with torch.no_grad():
        w = weights(fn(*inputs))

    def forward():
        with torch.no_grad():
            return fn(*inputs)

    def forward_backward():
        outs = fn(*leaves)
        loss = sum((o * wi).sum() for o, wi in zip(outs, w, strict=True))
        return [o.detach() for o in outs], torch.autograd.grad(loss, leaves)

    with kernels.use_reference():
        ref_out = forward()
        ref_outs, ref_grads = forward_backward()
    fused_out = forward()
    fused_outs, fused_grads = forward_backward()
    ref_fwd, fused_fwd = paired_median_ms(forward, repeats, device)
    ref_bwd, fused_bwd = paired_median_ms(forward_backward, repeats, device)
    return [
        BenchRow(kernel, size, "fwd", ref_fwd, fused_fwd, _max_diff(ref_out, fused_out)),
        BenchRow(kernel, size, "fwd+bwd", ref_bwd, fused_bwd,
                 _max_diff([*ref_outs, *ref_grads], [*fused_outs, *fused_grads])),
    ]


SPLINE = dict(num_bins=5, tail_bound=3.0, min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3,
              divisor=10.0)


def kernel_rows(
    repeats: int = 20, quick: bool = False, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> list[BenchRow]:
    """Each fused op at a few sizes (``quick``: tiny sizes, for tests)."""
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=dtype)).to(dev)

    rows: list[BenchRow] = []
    rq_sizes = [(8, 2)] if quick else [(100, 2), (512, 64), (65536, 2)]
    for n, d in rq_sizes:
        tidx = torch.arange(1, d, 2, device=dev)
        x, p = randn(n, d, scale=1.5), randn(n, tidx.numel(), 3 * SPLINE["num_bins"] - 1)
        rows += _compare(
            "rq-spline coupling (K=5)", f"{n}×{d}",
            lambda a, b, t=tidx: kernels.rq_coupling(a, b, t, **SPLINE), (x, p), repeats, dev,
        )
    for n, d in [(8, 4)] if quick else [(512, 64), (65536, 8)]:
        tidx = torch.arange(0, d, 2, device=dev)
        x, p = randn(n, d), randn(n, 2 * tidx.numel())
        rows += _compare(
            "affine coupling", f"{n}×{d}",
            lambda a, b, t=tidx: kernels.affine_coupling(a, b, t), (x, p), repeats, dev,
        )
    for b, n, d in [(4, 5, 2)] if quick else [(512, 3, 2), (512, 64, 2), (512, 64, 8), (128, 256, 64)]:
        j = randn(b, n, d)
        rows += _compare("log det(JᵀJ)", f"{b}×{n}×{d}", lambda a: (kernels.logdet_gram(a),), (j,), repeats, dev)
    return rows


def flow_rows(repeats: int = 10, quick: bool = False, device: str = "cpu") -> list[BenchRow]:
    """The 9-step RQ-spline coupling flow of :func:`mflow_cli.flows.builders.coupling_flow` (LU layers,
    ResidualNet conditioners with 100 hidden units), fused vs nflows' transforms, on the same weights."""
    from .flows.builders import coupling_flow

    dev = torch.device(device)
    rows: list[BenchRow] = []
    sizes = [(8, 2, 1, 8)] if quick else [(100, 2, 9, 100), (512, 64, 9, 100)]
    for n, d, layers, hidden in sizes:
        torch.manual_seed(0)
        flow = coupling_flow(d, layers, kind="rq_coupling", hidden_features=hidden).to(dev)
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(1)).to(dev)
        params = list(flow.parameters())

        def forward(x=x, flow=flow):
            with torch.no_grad():
                return flow(x)

        def forward_backward(x=x, flow=flow, params=params):
            z, logdet = flow(x)
            loss = 0.5 * (z**2).sum() - logdet.sum()
            return [z.detach(), logdet.detach()], torch.autograd.grad(loss, params)

        with kernels.use_reference():
            ref_out = forward()
            ref_outs, ref_grads = forward_backward()
        fused_out = forward()
        fused_outs, fused_grads = forward_backward()
        ref_fwd, fused_fwd = paired_median_ms(forward, repeats, dev)
        ref_bwd, fused_bwd = paired_median_ms(forward_backward, repeats, dev)
        name = f"{layers}-step RQ coupling flow"
        rows += [
            BenchRow(name, f"{n}×{d}", "fwd", ref_fwd, fused_fwd, _max_diff(ref_out, fused_out)),
            BenchRow(name, f"{n}×{d}", "fwd+bwd", ref_bwd, fused_bwd,
                     _max_diff([*ref_outs, *ref_grads], [*fused_outs, *fused_grads])),
        ]
    return rows


@dataclass
class ThroughputRow:
    """An end-to-end task, timed as items per second on the baseline and on mflow's path."""

    task: str
    baseline: str
    baseline_per_s: float
    mflow_per_s: float
    max_abs_diff: float

    @property
    def speedup(self) -> float:
        return self.mflow_per_s / self.baseline_per_s


def _median_s(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_rows(
    repeats: int = 10, quick: bool = False, batch: int = 100, threads: int | None = None
) -> list[ThroughputRow]:
    """The two figures the research code is judged by, on the thin-spiral DNF of ``recipes/dnf_spiral.yaml``
    (9 RQ-spline coupling steps with LU layers, 1 inner step, latent dim 1; untrained weights):

    - one training step (loss, backward, AdamW) at ``batch``: fused kernels vs the reference path;
    - the exact on-manifold density at ``batch`` points: M-flow eq. 3 with J_g from a per-point autograd
      loop (the research code's way, reference kernels) vs mflow's batched forward-mode pass (fused).
    """
    with _threads(threads):
        return _model_rows(repeats, quick, batch)


def _model_rows(repeats: int, quick: bool, batch: int) -> list[ThroughputRow]:
    from .jacobian import brute_force_jacobian, logdet_gram
    from .models.manifold_flow import ManifoldFlow

    torch.manual_seed(0)
    model = ManifoldFlow((2,), outer_layers=1 if quick else 9, hidden_features=8 if quick else 100)
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the same noise draw on both paths
        with kernels.use_reference():
            torch.manual_seed(2)
            ref_loss = model.loss(x, "joint")[0]
        torch.manual_seed(2)
        loss_diff = float((model.loss(x, "joint")[0] - ref_loss).abs())

    def loop():
        with kernels.use_reference():
            u = model.project(x)[0].detach()
            jac = brute_force_jacobian(model.decode, u)
            return (model.latent_log_prob(u) - 0.5 * logdet_gram(jac)).detach()

    def batched():
        with torch.no_grad():
            return model.log_prob_manifold(x)[0]

    diff = float((loop() - batched()).abs().max())
    density = ThroughputRow(f"on-manifold density, batch {batch} (points/s)", "per-point autograd loop",
                            batch / _median_s(loop, max(1, repeats // 5)), batch / _median_s(batched, repeats), diff)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-4)

    def step():
        loss, _ = model.loss(x, "joint")
        opt.zero_grad()
        loss.backward()
        opt.step()

    ref_ms, fused_ms = paired_median_ms(step, repeats, torch.device("cpu"), warmup=3)
    training = ThroughputRow(f"DNF training step, batch {batch} (samples/s)", "reference path",
                             1e3 * batch / ref_ms, 1e3 * batch / fused_ms, loss_diff)
    return [training, density]  # the density was timed first, on the untrained weights


def run_bench(
    repeats: int = 20, threads: int | None = None, quick: bool = False, device: str = "cpu",
    flows: bool = True,
) -> list[BenchRow]:
    """All rows (kernels, then the coupling flows), with ``threads`` intra-op threads (None: unchanged)."""
    if not kernels.extension_loaded():
        from .errors import ConfigError

        raise ConfigError(f"mflow bench: nothing to compare, {kernels.backend_info()}")
    with _threads(threads):
        rows = kernel_rows(repeats, quick=quick, device=device)
        if flows:
            rows += flow_rows(max(1, repeats // 2) if not quick else repeats, quick=quick, device=device)
    return rows
