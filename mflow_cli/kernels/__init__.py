"""Optional compiled kernels (``csrc/``). Without the extension everything runs on PyTorch ops."""

from __future__ import annotations


def backend_info() -> str:
    """Which implementation of the hot paths is active."""
    return "kernels: reference PyTorch path (no compiled extension built)"
