"""The C allocator's setting for long evaluations: large freed buffers go back to the system.

glibc's malloc serves a block of at least its *mmap threshold* (128 KiB at start) with its own ``mmap``, which
``free`` unmaps. Each time such a block is freed the threshold rises to its size (up to 32 MiB), and from then
on blocks of that size come from the heap. An evaluation that allocates and frees decoder buffers of a few MB
per batch, between small tensors it keeps (each batch's bounds), leaves those buffers as holes the heap cannot
give back: the k = 5,000 scoring of a flow-VAE grew from 0.6 to 8–22 GB that way. A fixed threshold (what
glibc's ``MALLOC_MMAP_THRESHOLD_`` environment variable sets) stops the rise, so every large buffer is unmapped
when freed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3
"""``mallopt``'s parameter number for the mmap threshold (glibc's ``malloc.h``)."""

ENVIRONMENT_VARIABLE = "MALLOC_MMAP_THRESHOLD_"


def return_freed_buffers(threshold_bytes: int = 1 << 20) -> bool:
    """Serve blocks of ``threshold_bytes`` or more with their own mapping from now on, so freeing one returns
    its memory to the system.

    A mapping costs a system call and fresh pages per buffer, so this is for long scoring passes (a test set at
    thousands of draws per example), not for a training loop.

    Returns whether the setting took: False off glibc (no ``mallopt``) or where the environment sets
    ``MALLOC_MMAP_THRESHOLD_`` (the user's choice stands).
    """
    if not sys.platform.startswith("linux") or ENVIRONMENT_VARIABLE in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)) == 1
