"""The glossary of every key the evaluators can emit: what it is, its unit and which direction is better.

:func:`all_metrics` collects each evaluator module's ``METRICS`` table, :func:`glossary_markdown` renders them
as the README's tables, :func:`metadata_block` gives the ``metadata`` block of an ``evaluation.json`` and
:func:`renamed_keys` maps the keys of files written by earlier versions to today's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import manifold, vq_flow
from .common import Metric

try:
    from .images import METRICS as _IMAGES_METRICS
except ImportError:  # the image evaluator has no table yet
    _IMAGES_METRICS: dict[str, Metric] = {}
try:
    from .images import RENAMED_METRICS as _IMAGES_RENAMED
except ImportError:
    _IMAGES_RENAMED: dict[str, str] = {}
try:
    from .flow_vae import METRICS as _FLOW_VAE_METRICS
except ImportError:  # the flow-VAE evaluator has no table yet
    _FLOW_VAE_METRICS: dict[str, Metric] = {}
try:
    from .flow_vae import RENAMED_METRICS as _FLOW_VAE_RENAMED
except ImportError:
    _FLOW_VAE_RENAMED: dict[str, str] = {}

EVALUATOR_TITLES: dict[str, str] = {
    "manifold": "Manifold models on vector data (`evaluate_manifold`)",
    "images": "Manifold models on image data (`evaluate_images`)",
    "vq_flow": "VQ-Flows and classic flows (`evaluate_vq_flow`)",
    "flow_vae": "Flow-VAEs (`evaluate_flow_vae`)",
}


def all_metrics() -> dict[str, dict[str, Metric]]:
    """Every evaluator's table of keys -> :class:`Metric`, by evaluator (``manifold``, ``images``, ``vq_flow``,
    ``flow_vae``); an evaluator whose module defines no ``METRICS`` has an empty table."""
    return {
        "manifold": dict(manifold.METRICS),
        "images": dict(_IMAGES_METRICS),
        "vq_flow": dict(vq_flow.METRICS),
        "flow_vae": dict(_FLOW_VAE_METRICS),
    }


def all_renamed() -> dict[str, dict[str, str]]:
    """Every evaluator's renamed keys (old -> new), by evaluator, as :func:`all_metrics`."""
    return {
        "manifold": dict(manifold.RENAMED_METRICS),
        "images": dict(_IMAGES_RENAMED),
        "vq_flow": dict(vq_flow.RENAMED_METRICS),
        "flow_vae": dict(_FLOW_VAE_RENAMED),
    }


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def glossary_markdown() -> str:
    """Markdown for the README: per evaluator a heading and a table ``key | meaning | unit | better``, the
    timings (machine-dependent) marked, then the renamed keys of earlier versions."""
    parts = []
    renamed = all_renamed()
    for evaluator, table in all_metrics().items():
        parts.append(f"### {EVALUATOR_TITLES[evaluator]}\n")
        if not table:
            parts.append("(no glossary yet)\n")
            continue
        rows = ["| key | meaning | unit | better |", "| --- | --- | --- | --- |"]
        for key, metric in table.items():
            meaning = f"**{metric.name}**. {metric.doc}" + (" *(timing, machine-dependent)*" if metric.timing else "")
            rows.append(f"| `{key}` | {_markdown_cell(meaning)} | {metric.unit} | {metric.better} |")
        parts.append("\n".join(rows) + "\n")
        if renamed[evaluator]:
            old = ", ".join(f"`{a}` → `{b}`" for a, b in renamed[evaluator].items())
            parts.append(f"Renamed keys of earlier versions: {old}.\n")
    return "\n".join(parts)


def metadata_block(keys: Iterable[str], metrics: Mapping[str, Metric] | None = None) -> dict[str, dict[str, Any]]:
    """The ``metadata`` block of an ``evaluation.json``: key -> ``{name, unit, better, timing}`` for each of
    ``keys`` (in their order).

    ``metrics`` is the evaluator's table (e.g. ``manifold.METRICS``); by default the key is looked up in every
    evaluator's table (a key shared by two evaluators, like ``n_test``, means the same in both). A key no table
    describes raises ``KeyError`` naming it: the glossary must not miss a key.
    """
    tables = [metrics] if metrics is not None else list(all_metrics().values())
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        metric = next((t[key] for t in tables if key in t), None)
        if metric is None:
            raise KeyError(f"metric {key!r} is in no evaluator's METRICS table")
        out[key] = {"name": metric.name, "unit": metric.unit, "better": metric.better, "timing": metric.timing}
    return out


def renamed_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """An ``evaluation.json``'s metrics with keys of earlier versions renamed to today's (others kept)."""
    old_to_new: dict[str, str] = {}
    for table in all_renamed().values():
        old_to_new.update(table)
    return {old_to_new.get(key, key): value for key, value in values.items()}


def split_timings(
    values: Mapping[str, Any], metrics: Mapping[str, Metric] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An evaluation's values split into (quality metrics, machine-dependent timings), each in its order, for
    ``mflow evaluate``'s two tables; ``metrics`` as in :func:`metadata_block`."""
    described = metadata_block(values, metrics)
    quality = {k: v for k, v in values.items() if not described[k]["timing"]}
    timings = {k: v for k, v in values.items() if described[k]["timing"]}
    return quality, timings
