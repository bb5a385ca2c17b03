"""Load the compiled extension ``mflow_cli._C`` if it was built and fits this torch; else ``None``.

An extension built against another torch (ABI mismatch, missing symbols) fails at import with
ImportError/OSError: that is caught and the pure-PyTorch reference path is used instead.
"""

from __future__ import annotations

import os
from types import ModuleType

ext: ModuleType | None = None
load_error: str | None = None

if os.environ.get("MFLOW_NO_EXT", "") not in ("", "0"):
    load_error = "disabled by MFLOW_NO_EXT=1"
else:
    try:
        import torch  # noqa: F401  (loads libtorch before the extension)

        from .. import _C as ext  # type: ignore[attr-defined, no-redef]
    except (ImportError, OSError) as exc:
        ext = None
        load_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
