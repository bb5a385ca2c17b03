"""Side-by-side timings of mflow's paths and their baselines, in one process on the same inputs.

Each row names its baseline (``baseline``; the kernel rows also say it in their name):

- kernel rows: the fused op (``mflow_cli._C``) vs the pure-PyTorch reference (nflows' own spline code,
  nflows' affine formula, ``torch.linalg.cholesky`` of JᵀJ, a flow-VAE's planar steps one by one as PyTorch
  ops, ``torch.linalg.eigh`` in the orthogonal Sylvester flow's polar factor), the reference inside
  :func:`mflow_cli.kernels.use_reference`, which is also how the fused layers fall back to nflows;
- flow rows: mflow's 9-step RQ coupling flow vs the same flow on nflows' transforms (same weights), and
  vs ``zuko.flows.NSF`` (9 spline coupling transforms of the same width; the ``bench`` extra), the peer
  a user would pick today;
- end-to-end rows (:func:`model_rows`): the thin-spiral DNF's training step vs the same step on nflows'
  layers, and the exact on-manifold density vs the research code's method (one reverse-mode autograd
  pass per output dimension, batched over the points, on nflows' layers).

Each time is the median of ``repeats`` calls after warm-up, the paths alternating call by call so that
load changes hit both alike, for the forward pass and for forward + backward, with the largest absolute
difference between the two paths' results (outputs for ``fwd``, outputs and input/parameter gradients for
``fwd+bwd``; NaN where the baseline is another model, zuko).
"""

from __future__ import annotations

import contextlib
import copy
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
    baseline: str = "reference PyTorch path"

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


def paired_times_ms(
    fns: Sequence[Callable[[], object]], repeats: int, device: torch.device, warmup: int = 2
) -> list[float]:
    """Median time of each of ``fns`` in milliseconds, the functions called in turn, round after round
    (so that a change of machine load hits all alike)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for fn, acc in zip(fns, times, strict=True):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            acc.append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def _on_reference(fn: Callable[[], object], flag: bool = True) -> Callable[[], object]:
    def run():
        with kernels.use_reference(flag):
            return fn()

    return run


def paired_median_ms(
    fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 2
) -> tuple[float, float]:
    """Median times of ``fn()`` on the reference path and on the fused path, in milliseconds.

    The two paths alternate call by call, so a change of machine load hits both alike.
    """
    ref, fused = paired_times_ms([_on_reference(fn), _on_reference(fn, False)], repeats, device, warmup)
    return ref, fused


def _max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b, strict=True))


def _compare(
    kernel: str, size: str, fn: Callable[..., Sequence[torch.Tensor]], inputs: Sequence[torch.Tensor],
    repeats: int, device: torch.device, baseline: str,
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
    name = f"{kernel} vs {baseline}"
    return [
        BenchRow(name, size, "fwd", ref_fwd, fused_fwd, _max_diff(ref_out, fused_out), baseline),
        BenchRow(name, size, "fwd+bwd", ref_bwd, fused_bwd,
                 _max_diff([*ref_outs, *ref_grads], [*fused_outs, *fused_grads]), baseline),
    ]


TRAINING_ADAMW = dict(fused=True)  # keep in step with the optimiser of mflow_cli/training.py

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
            lambda a, b, t=tidx: kernels.rq_coupling(a, b, t, **SPLINE), (x, p), repeats, dev, "nflows",
        )
    for n, d in [(8, 4)] if quick else [(512, 64), (65536, 8)]:
        tidx = torch.arange(0, d, 2, device=dev)
        x, p = randn(n, d), randn(n, 2 * tidx.numel())
        rows += _compare(
            "affine coupling", f"{n}×{d}",
            lambda a, b, t=tidx: kernels.affine_coupling(a, b, t), (x, p), repeats, dev, "nflows",
        )
    for b, n, d in [(4, 5, 2)] if quick else [(512, 3, 2), (512, 64, 2), (512, 64, 8), (128, 256, 64)]:
        j = randn(b, n, d)
        rows += _compare("log det(JᵀJ)", f"{b}×{n}×{d}", lambda a: (kernels.logdet_gram(a),), (j,), repeats, dev,
                         "torch.linalg")
    if dev.type == "cpu":  # the planar chain is CPU-only (CUDA tensors run the steps one by one on both sides)
        from .flows.latent import LatentFlow

        for draws, n, d, k in [((), 8, 4, 3)] if quick else [((), 100, 40, 80), ((20,), 100, 40, 80),
                                                                 ((200,), 25, 40, 80)]:  # the last: the size rule
            flow = LatentFlow("planar", d, k, dynamic=True).to(dtype)
            z, p = randn(*draws, n, d), flow.init_params().to(dtype)[None] + randn(n, flow.num_params, scale=0.1)
            rows += _compare(f"planar chain (K={k})", "×".join(map(str, (*draws, n, d))),
                             lambda a, b, f=flow: f(a, b), (z, p), repeats, dev, "PyTorch ops per step")
        from .flows.latent import PolarFactor

        # an orthogonal Sylvester step's Q for a training batch: one native call each way (Jacobi eigh of QᵀQ
        # inside) against the PyTorch ops on torch.linalg.eigh (the last size: the size rule keeps the latter)
        for n, d, m in [(5, 6, 3)] if quick else [(100, 40, 8), (100, 40, 20), (100, 64, 32)]:
            rows += _compare(f"polar factor (M={m})", f"{n}×{d}×{m}",
                             lambda q: (PolarFactor.apply(q),), (randn(n, d, m),), repeats, dev,
                             "PyTorch ops, torch.linalg.eigh")
    return rows


def _nll(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    from .models.base import standard_normal_log_prob

    return -(standard_normal_log_prob(z) + logdet)


def _zuko_nsf(features: int, layers: int, hidden: int, device: torch.device):
    """zuko's spline flow of about mflow's size: ``layers`` RQ-spline coupling transforms (``passes=2``),
    5 bins, MLP conditioners of 5 hidden layers of ``hidden`` (mflow: ResidualNet, 6 linear layers).
    None without zuko (``pip install mflow[bench]``)."""
    try:
        import zuko
    except ImportError:
        return None
    passes = 2 if features > 1 else None
    return zuko.flows.NSF(features, transforms=layers, bins=SPLINE["num_bins"], passes=passes,
                          hidden_features=[hidden] * 5).to(device)


def flow_rows(repeats: int = 10, quick: bool = False, device: str = "cpu") -> list[BenchRow]:
    """The 9-step RQ-spline coupling flow of :func:`mflow_cli.flows.builders.coupling_flow` (LU layers,
    ResidualNet conditioners with 100 hidden units): mflow's pass (:func:`mflow_cli.flows.fused.flow_pass`, as
    the manifold flows run it: one node for the whole pass on the CPU) vs nflows' transforms on the same weights
    (loss ½|z|² − log|det|), then vs ``zuko.flows.NSF`` (the negative log-likelihood, both)."""
    from .flows.builders import coupling_flow
    from .flows.fused import flow_pass

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
                return flow_pass(flow, x)  # nflows' own layers inside kernels.use_reference()

        def forward_backward(x=x, flow=flow, params=params):
            z, logdet = flow_pass(flow, x)
            loss = 0.5 * (z**2).sum() - logdet.sum()
            return [z.detach(), logdet.detach()], torch.autograd.grad(loss, params)

        with kernels.use_reference():
            ref_out = forward()
            ref_outs, ref_grads = forward_backward()
        fused_out = forward()
        fused_outs, fused_grads = forward_backward()
        ref_fwd, fused_fwd = paired_median_ms(forward, repeats, dev)
        ref_bwd, fused_bwd = paired_median_ms(forward_backward, repeats, dev)
        name = f"{layers}-step RQ coupling flow vs nflows"
        rows += [
            BenchRow(name, f"{n}×{d}", "fwd", ref_fwd, fused_fwd, _max_diff(ref_out, fused_out), "nflows"),
            BenchRow(name, f"{n}×{d}", "fwd+bwd", ref_bwd, fused_bwd,
                     _max_diff([*ref_outs, *ref_grads], [*fused_outs, *fused_grads]), "nflows"),
        ]
        peer = _zuko_nsf(d, layers, hidden, dev)
        if peer is None:
            continue
        peer_params = list(peer.parameters())

        def ours_nll(x=x, flow=flow):
            with torch.no_grad():
                return _nll(*flow_pass(flow, x))

        def zuko_nll(x=x, peer=peer):
            with torch.no_grad():
                return -peer().log_prob(x)

        def ours_step(x=x, flow=flow, params=params):
            return torch.autograd.grad(_nll(*flow_pass(flow, x)).mean(), params)

        def zuko_step(x=x, peer=peer, params=peer_params):
            return torch.autograd.grad(-peer().log_prob(x).mean(), params)

        zuko_fwd, ours_fwd = paired_times_ms([zuko_nll, ours_nll], repeats, dev)
        zuko_bwd, ours_bwd = paired_times_ms([zuko_step, ours_step], repeats, dev)
        name = f"{layers}-step spline flow NLL vs zuko NSF"
        rows += [
            BenchRow(name, f"{n}×{d}", "fwd", zuko_fwd, ours_fwd, float("nan"), "zuko.flows.NSF"),
            BenchRow(name, f"{n}×{d}", "fwd+bwd", zuko_bwd, ours_bwd, float("nan"), "zuko.flows.NSF"),
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


def training_step(net: torch.nn.Module, x: torch.Tensor, reference: bool, **adamw) -> Callable[[], None]:
    """One joint-loss training step of ``net`` on ``x`` (loss, backward, AdamW with ``adamw``), on nflows' own
    layers when ``reference`` (:func:`mflow_cli.kernels.use_reference`), else on mflow's fused paths."""
    opt = torch.optim.AdamW(net.parameters(), **adamw)

    def step() -> None:
        with kernels.use_reference(reference):
            loss, _ = net.loss(x, "joint")
            opt.zero_grad()
            loss.backward()
            opt.step()

    return step


def model_rows(
    repeats: int = 10, quick: bool = False, batch: int = 100, threads: int | None = None
) -> list[ThroughputRow]:
    """The figures the research code is judged by, on the thin-spiral DNF of ``recipes/dnf_spiral.yaml``
    (9 RQ-spline coupling steps with LU layers, 1 inner step, latent dim 1; untrained weights):

    - one training step (loss, backward, AdamW) at ``batch``: mflow's (fused kernels, training.py's AdamW) vs the
      research code's (nflows' layers, torch's default AdamW), two copies of the same weights;
    - the same step with each flow pass as one autograd node (:func:`mflow_cli.flows.fused.flow_pass`) against
      the same fused layers one node each;
    - the exact on-manifold density (M-flow eq. 3) at ``batch`` points: J_g by the research code's method
      (:func:`mflow_cli.jacobian.reverse_mode_jacobian`: one reverse-mode pass per output dimension, batched
      over the points, nflows' layers) vs mflow's ``log_prob_manifold`` (forward-mode rules, fused kernels);
    - the same density on a 10,000-point grid (100 × 100 over [-3, 3]², as ``mflow evaluate``'s
      ``ambient_grid_seconds``) in batches of ``batch``; the research method is timed on 1,000 of the points;
    - the decoder's value and tangent (the inverse pass behind J_g): one native call for the whole pass against
      the same plan run step by step in Python (what CUDA tensors and flows without a compiled program get).
    """
    with _threads(threads):
        return _model_rows(repeats, quick, batch)


def _model_rows(repeats: int, quick: bool, batch: int) -> list[ThroughputRow]:
    from .flows.fused import per_layer_passes
    from .jacobian import flow_with_tangents, logdet_gram, reverse_mode_jacobian
    from .metrics.manifold import ambient_grid
    from .models.manifold_flow import ManifoldFlow

    torch.manual_seed(0)
    model = ManifoldFlow((2,), outer_layers=1 if quick else 9, hidden_features=8 if quick else 100)
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    with torch.no_grad():  # the same noise draw on both paths
        with kernels.use_reference():
            torch.manual_seed(2)
            ref_loss = model.loss(x, "joint")[0]
        torch.manual_seed(2)
        loss_diff = float((model.loss(x, "joint")[0] - ref_loss).abs())

    def research(points: torch.Tensor = x) -> torch.Tensor:
        with kernels.use_reference():
            with torch.no_grad():
                u = model.project(points)[0]
            _, jac = reverse_mode_jacobian(model.decode, u)
            with torch.no_grad():
                return model.latent_log_prob(u) - 0.5 * logdet_gram(jac)

    def ours(points: torch.Tensor = x) -> torch.Tensor:
        with torch.no_grad():
            return model.log_prob_manifold(points)[0]

    diff = float((research() - ours()).abs().max())
    research_ms, ours_ms = paired_times_ms([research, ours], repeats, cpu)
    density = ThroughputRow(f"on-manifold density, batch {batch} (points/s)",
                            "research method: reverse mode per output dim, nflows layers",
                            1e3 * batch / research_ms, 1e3 * batch / ours_ms, diff)

    grid = ambient_grid(3.0, 20 if quick else 100)
    sample = grid[:: max(1, len(grid) // 1000)][:1000]

    def research_grid():
        return [research(chunk) for chunk in torch.split(sample, batch)]

    def ours_grid():
        return [ours(chunk) for chunk in torch.split(grid, batch)]

    research_grid_ms, ours_grid_ms = paired_times_ms([research_grid, ours_grid], max(1, repeats // 5), cpu, 1)
    grid_diff = float((torch.cat(research_grid()) - ours(sample)).abs().max())
    grid_row = ThroughputRow(
        f"{len(grid):,}-point grid, batch {batch}: mflow {ours_grid_ms / 1e3:.2f} s (points/s)",
        f"research method (on {len(sample):,} of the points)",
        1e3 * len(sample) / research_grid_ms, 1e3 * len(grid) / ours_grid_ms, grid_diff,
    )

    y = torch.cat([model.project(x)[0].detach(), x.new_zeros(batch, 1)], 1)  # the decoder's inputs [u, 0]
    tangent = torch.eye(1, 2).expand(1, batch, 2)

    def decoder_pass(whole_pass: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return flow_with_tangents(model.outer, y, tangent, inverse=True, whole_pass=whole_pass)[1]

        return run

    steps_ms, whole_ms = paired_times_ms([decoder_pass(False), decoder_pass(True)], repeats, cpu)
    whole_pass = ThroughputRow(f"decoder value and tangent, batch {batch} (points/s)",
                               "the same plan step by step in Python (the CUDA path)", 1e3 * batch / steps_ms,
                               1e3 * batch / whole_ms,
                               float((decoder_pass(False)() - decoder_pass(True)()).abs().max()))

    twin = copy.deepcopy(model)  # the baseline's own copy: the two optimisers differ

    # baseline: the research code's step (nflows' layers, torch's default per-parameter AdamW loop);
    # mflow: fused kernels and the AdamW of mflow_cli/training.py (foreach=True)
    adamw = dict(lr=3e-4, weight_decay=1e-4)
    ref_ms, fused_ms = paired_times_ms([training_step(twin, x, True, **adamw),
                                        training_step(model, x, False, **adamw, **TRAINING_ADAMW)], repeats, cpu, 3)
    training = ThroughputRow(f"DNF training step, batch {batch} (samples/s)",
                             "same step on nflows' layers, default AdamW", 1e3 * batch / ref_ms, 1e3 * batch / fused_ms,
                             loss_diff)

    layered = copy.deepcopy(model)  # the same weights, stepped through the flows' own calls
    with torch.no_grad():
        torch.manual_seed(2)
        with per_layer_passes():
            layered_loss = layered.loss(x, "joint")[0]
        torch.manual_seed(2)
        node_diff = float((model.loss(x, "joint")[0] - layered_loss).abs())
    layered_step = training_step(layered, x, False, **adamw, **TRAINING_ADAMW)

    def per_layer_step() -> None:
        with per_layer_passes():
            layered_step()

    layers_ms, node_ms = paired_times_ms([per_layer_step, training_step(model, x, False, **adamw, **TRAINING_ADAMW)],
                                         repeats, cpu, 3)
    one_node = ThroughputRow(f"DNF training step, batch {batch}: one node per pass (samples/s)",
                             "the same fused layers, one autograd node each", 1e3 * batch / layers_ms,
                             1e3 * batch / node_ms, node_diff)
    return [training, one_node, density, grid_row, whole_pass]  # densities timed first, on the untrained weights


def run_bench(
    repeats: int = 20, threads: int | None = None, quick: bool = False, device: str = "cpu",
    flows: bool = True,
) -> list[BenchRow]:
    """All rows (kernels, then the coupling flows), with ``threads`` intra-op threads (None: unchanged)."""
    from .errors import ConfigError

    if not kernels.extension_loaded():
        raise ConfigError(f"mflow bench: nothing to compare, {kernels.backend_info()}")
    try:
        where = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"mflow bench: --device {device!r} is not a torch device (cpu, cuda, cuda:N)") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"mflow bench: --device {device!r}, but this torch ({torch.__version__}) sees no CUDA device")
    if where.type == "cuda" and not kernels.ext.with_cuda:
        raise ConfigError(f"mflow bench: --device {device!r}, but {kernels.backend_info()}: rebuild the extension "
                          "against a CUDA torch (python setup.py build_ext --inplace) to time its CUDA kernels")
    if where.type not in ("cpu", "cuda"):
        raise ConfigError(f"mflow bench: --device {device!r}: the kernels run on cpu or cuda")
    with _threads(threads):
        rows = kernel_rows(repeats, quick=quick, device=device)
        if flows:
            rows += flow_rows(max(1, repeats // 2) if not quick else repeats, quick=quick, device=device)
    return rows


# ---------------------------------------------------------------- cost growth


@dataclass
class GrowthRow:
    """One size of a cost-growth curve: seconds and peak extra resident memory (MB) per point."""

    task: str
    latent_dim: int
    data_dim: int
    batch: int
    seconds_per_point: float
    peak_mb_per_point: float
    research_seconds_per_point: float | None = None  # the reverse-mode method, extrapolated from a few outputs


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def growth_case(task: str, latent_dim: int, data_dim: int, batch: int, repeats: int = 3) -> GrowthRow:
    """One point of a cost-growth curve, meant for a fresh process (the peak memory is the process's growth):

    - ``mflow_nll``: M-flow's exact negative log-likelihood (M-flow eq. 3, J_g by forward mode through the
      9-step RQ coupling flow), forward and backward to all parameters;
    - ``density``: the exact on-manifold log density of a dense stand-in for an image decoder
      (d → 1024 → D MLP, tanh), J_g by one batched forward-mode pass, then log det(JᵀJ); the research
      method's cost (one reverse-mode pass per output dimension) is extrapolated from 16 of the D passes.
    """
    from .jacobian import batched_jacobian, logdet_gram, reverse_mode_jacobian

    torch.manual_seed(0)
    research = None
    if task == "mflow_nll":
        from .models.manifold_flow import ManifoldFlow

        model = ManifoldFlow((data_dim,), latent_dim=latent_dim, noise_std=0.0, reconstruction_weight=1000.0,
                             schedule="sequential")  # M-flow's settings
        x = torch.randn(batch, data_dim)

        def work():
            nll = -model.log_prob_manifold(x)[0].mean()
            nll.backward()

    elif task == "density":
        decoder = torch.nn.Sequential(torch.nn.Linear(latent_dim, 1024), torch.nn.Tanh(),
                                      torch.nn.Linear(1024, data_dim))
        u = torch.randn(batch, latent_dim)

        def work():
            with torch.no_grad():
                _, jac = batched_jacobian(decoder, u)
                return logdet_gram(jac)

        outputs = 16

        def research_part():
            return reverse_mode_jacobian(lambda v: decoder(v)[:, :outputs], u)

    else:
        raise ValueError(f"task must be mflow_nll or density, got {task!r}")
    before = _peak_rss_mb()
    work()  # warm-up, and the peak
    peak = _peak_rss_mb() - before
    seconds = _median_s(work, repeats, warmup=0)
    if task == "density":
        research = _median_s(research_part, repeats) * data_dim / outputs / batch
    return GrowthRow(task, latent_dim, data_dim, batch, seconds / batch, peak / batch, research)


def growth_rows(threads: int | None = 1) -> list[GrowthRow]:
    """The cost-growth curves of issue 15, each size in a fresh process: M-flow exact NLL (fwd+bwd) at
    D = 10, 40, 100, 1,000 (d = 2 and 8), and the on-manifold density at D = 12,288 with
    d = 8, 32, 64."""
    import json
    import subprocess
    import sys

    cases = [("mflow_nll", d, big, 10) for big in (10, 40, 100, 1000) for d in (2, 8)]
    cases += [("density", d, 12288, 16) for d in (8, 32, 64)]
    rows = []
    for task, d, big, batch in cases:
        code = (f"import torch, json, dataclasses; torch.set_num_threads({threads or torch.get_num_threads()}); "
                "from mflow_cli.bench import growth_case; "
                f"print(json.dumps(dataclasses.asdict(growth_case({task!r}, {d}, {big}, {batch}, repeats=5))))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append(GrowthRow(**json.loads(out.stdout.strip().splitlines()[-1])))
    return rows
