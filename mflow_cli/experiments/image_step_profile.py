"""Where a DNF training step of the image architecture spends its time on the CPU, at 16×16, 32×32 and 64×64.

    python -m mflow_cli.experiments.image_step_profile [--resolutions 16 32 64] [--rounds 3] [--set key=value]

The model is ``recipes/dnf_gan2d.yaml``'s (the 64×64 architecture: 100-channel conditioner ResNets, 5 steps per
level, spline bins 11) with ``levels`` = log2(resolution) − 2 (16 → 2, 32 → 3, 64 → 4), on procedural images,
batch 25, one thread. For each resolution: one training step (loss, backward, AdamW) on mflow's path against
nflows' own layers on a copy of the weights (``kernels.use_reference()``: nflows' spline on 4-D tensors, NCHW
convolutions), alternating round by round; the encode (f(x̃) with its log-det) and decode (g(u)) passes forward
and backward; and the share of mflow's step by kind of operator (``torch.profiler``, self CPU time).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from rich.console import Console

from .. import kernels
from ..app.recipe import load_recipe
from ..app.recipes import resolve_recipe
from ..app.runs import build_model
from ..bench import paired_times_ms, training_step

console = Console(highlight=False)

GROUPS = ("convolutions", "spline kernel", "matrix products", "optimizer", "other operators")


def _group(op: str) -> str:
    if "conv" in op or "mkldnn" in op:
        return "convolutions"
    if "RQCoupling" in op or op.startswith("nflows") or "softmax" in op or "searchsorted" in op:
        return "spline kernel"
    if op in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear"):
        return "matrix products"
    if "adam" in op.lower() or "Optimizer" in op:
        return "optimizer"
    return "other operators"


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def profile_resolution(resolution: int, rounds: int = 3, overrides: list[str] | None = None) -> dict:
    """Step times (mflow vs nflows' layers), encode/decode split and operator shares at one resolution."""
    levels = max(1, int(math.log2(resolution)) - 2)
    recipe = load_recipe(resolve_recipe("dnf_gan2d"), [f"data.resolution={resolution}", f"model.levels={levels}",
                                                       "data.source=procedural", *(overrides or [])])
    torch.manual_seed(0)
    model = build_model(recipe, (3, resolution, resolution))
    twin = copy.deepcopy(model)
    batch = int(recipe.train["batch_size"])
    x = torch.rand(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(1)) - 0.5

    ours = training_step(model, x, False, lr=3e-4, fused=True)
    theirs = training_step(twin, x, True, lr=3e-4, fused=True)
    reference_ms, mflow_ms = paired_times_ms([theirs, ours], rounds, torch.device("cpu"), warmup=1)
    flat = x.reshape(batch, -1)
    with torch.no_grad():
        u = model.project(flat)[0]
    encode_ms = _median_ms(lambda: model.project(flat)[2].sum().backward(), rounds)
    decode_ms = _median_ms(lambda: model.decode(u).sum().backward(), rounds)
    with torch.profiler.profile() as prof:
        ours()
    shares: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        shares[_group(event.key)] += event.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {
        "resolution": resolution, "levels": levels, "batch": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "nflows_step_ms": reference_ms, "mflow_step_ms": mflow_ms,
        "encode_ms": encode_ms, "decode_ms": decode_ms,
        "shares": {g: shares[g] / total for g in GROUPS},
    }


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (the README's)."""
    lines = ["| image | levels | parameters | step, nflows' layers (ms) | step, mflow (ms) | speed-up "
             "| encode fwd+bwd (ms) | decode fwd+bwd (ms) | " + " | ".join(GROUPS) + " |",
             "|---" * (8 + len(GROUPS)) + "|"]
    for r in rows:
        lines.append(
            f"| {r['resolution']}×{r['resolution']} | {r['levels']} | {r['parameters'] / 1e6:.2f} M "
            f"| {r['nflows_step_ms']:.0f} | {r['mflow_step_ms']:.0f} | {r['nflows_step_ms'] / r['mflow_step_ms']:.2f}× "
            f"| {r['encode_ms']:.0f} | {r['decode_ms']:.0f} | "
            + " | ".join(f"{100 * r['shares'][g]:.0f}%" for g in GROUPS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per path (median)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="override a recipe key")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console.print(f"{kernels.backend_info()}; {args.threads} thread(s)")
    rows = [profile_resolution(resolution, args.rounds, args.overrides) for resolution in args.resolutions]
    console.print(markdown_table(rows), markup=False, soft_wrap=True)
    return rows


if __name__ == "__main__":
    main()
