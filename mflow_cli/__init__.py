"""mflow: normalizing flows for data on (or near) low-dimensional manifolds.

The scripting API (``import mflow_cli as mf``): :func:`read_recipe`, :func:`train` and :func:`load_run`, which
returns a :class:`~mflow_cli.app.api.Run` (``sample``, ``encode``, ``log_prob``, ``project``). They are loaded
on first use, so ``import mflow_cli.models`` (the library alone) pulls in no application code.
"""

from __future__ import annotations

from typing import Any

from .version import __version__

__all__ = ["Run", "__version__", "load_run", "read_recipe", "train"]
_API = ("Run", "load_run", "read_recipe", "train")


def __getattr__(name: str) -> Any:
    if name in _API:
        from .app import api

        return getattr(api, name)
    raise AttributeError(f"module 'mflow_cli' has no attribute {name!r}")
