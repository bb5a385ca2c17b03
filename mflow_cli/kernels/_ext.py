"""Load the compiled extension ``mflow_cli._C`` if it was built and fits this torch; else ``None``.

An extension built against another torch (ABI mismatch, missing symbols) fails at import with
ImportError/OSError, and one built from older sources lacks some of :data:`OPS`: either way the pure-PyTorch
reference path is used instead, and :data:`load_error` says why.
"""

from __future__ import annotations

import os
from types import ModuleType

ext: ModuleType | None = None
load_error: str | None = None

OPS = ("rq_forward", "rq_backward", "rq_jvp", "affine_forward", "affine_backward", "affine_jvp", "logdet_gram_forward",
       "logdet_gram_backward", "flow_tangents", "residual_net_forward", "residual_net_backward", "lu_linear_forward",
       "lu_linear_backward", "flow_pass_forward", "flow_pass_backward", "planar_chain_forward", "planar_chain_backward",
       "symmetric_eigh", "polar_factor_forward", "polar_factor_backward")


def missing_ops(module: ModuleType) -> list[str]:
    """The ops of :data:`OPS` that a build of the extension lacks (it was built from older sources)."""
    return [op for op in OPS if not hasattr(module, op)]


if os.environ.get("MFLOW_NO_EXT", "") not in ("", "0"):
    load_error = "disabled by MFLOW_NO_EXT=1"
else:
    try:
        import torch  # noqa: F401  (loads libtorch before the extension)

        from .. import _C as ext  # type: ignore[attr-defined, no-redef]
    except (ImportError, OSError) as exc:
        ext = None
        load_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    else:
        missing = missing_ops(ext)
        if missing:  # built from older sources
            ext = None
            load_error = f"mflow_cli._C is out of date (no {', '.join(missing)}); rebuild it with pip install -e ."
