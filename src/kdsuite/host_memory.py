"""CPU training keeps the memory it frees in the process's heap instead of handing it back.

A training step allocates and frees the same activations, gradients and teacher outputs at every
step. glibc's malloc serves a block above its mmap threshold (128 KiB, raised on the fly up to
32 MiB) with fresh pages from the kernel and unmaps it on free, and it returns the heap's free top
to the kernel beyond its trim threshold; so every step faults in, and the kernel zeroes, hundreds
of MiB anew. On a 2-core AMD EPYC, keeping them made a bert2l ce step 1.13x and live
distillation steps 1.14-1.15x faster (two benches run back to back), and live kd, fdd and codir
steps 0.98-0.99x their ideal where glibc's defaults gave 1.04-1.13x (`experiments/results/bench.md`).
It is what `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=...` in the environment does,
done from inside the process, so `run.py`, the benches and the tests get it without a launcher. The price:
the process's resident memory stays at its peak (a training step comes back to that peak anyway).

Only glibc has these settings: elsewhere (macOS, musl) this does nothing; a user who set either
variable keeps their own choice, and `KDSUITE_MALLOC=glibc` leaves glibc's defaults alone (what
`experiments/bench/bench_step.py --malloc glibc` compares against). A GPU run does not need it (the CUDA
caching allocator keeps device memory already).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (4 MiB * sizeof(long))
TRIM_THRESHOLD_NEVER = 2**31 - 1  # mallopt takes an int: trim only a free top over 2 GiB
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_kept = False


def keep_freed_memory_in_heap() -> bool:
    """Raise glibc's mmap threshold to its maximum and its trim threshold out of reach, once per
    process. Returns whether the settings are in force (False: not glibc, or the user's own)."""
    global _kept
    if _kept:
        return True
    if any(name in os.environ for name in USER_SETTINGS) or os.environ.get("KDSUITE_MALLOC") == "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl and macOS have no such symbol
        mallopt = libc.mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = (bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX))
             and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_NEVER)))
    if not _kept:
        log.warning("glibc refused mallopt: CPU steps keep paying page faults for memory they free")
    return _kept
