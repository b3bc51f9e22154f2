"""Keep freed memory in the process: glibc's malloc hands large blocks back to the system when they are
freed and maps them again, page by page, when the next step asks for the same sizes.

A training step on a CPU allocates and frees the same few hundred activation and gradient tensors every
step, many of them megabytes in size. With glibc's defaults each is a fresh ``mmap`` whose pages fault in
as they are first written: in a BiSeNetV2 step (batch 8 of 192x256, 2 cores) that was about 8% of the
step, in float32 and in bf16 alike. Raising the two thresholds below keeps those blocks in the heap and
reuses them; the process's memory then stays at its peak instead of shrinking between steps.

Changed only where it can be and the user has not chosen: on glibc (Linux), without ``MALLOC_*`` or
``GLIBC_TUNABLES`` settings or a preloaded allocator (jemalloc, tcmalloc) in the environment, and never
with ``BISENET_PL_ALLOCATOR=system``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap; up to 1 GiB free at its top is kept

USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def user_chose_allocator(environ: os._Environ | dict = os.environ) -> str | None:
    """The environment variable by which the user chose an allocator or its settings, if any."""
    if environ.get("BISENET_PL_ALLOCATOR", "").lower() == "system":
        return "BISENET_PL_ALLOCATOR"
    return next((name for name in USER_SETTINGS if environ.get(name)), None)


_kept: bool | None = None  # None until keep_freed_memory has run in this process


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds to :data:`KEEP_BYTES` once per process; whether they are set."""
    global _kept
    if _kept is None:
        _kept = _set_thresholds()
    return _kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has set the thresholds in this process (asking changes nothing)."""
    return bool(_kept)


def _set_thresholds() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_chose_allocator():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    except (OSError, AttributeError):
        return False
