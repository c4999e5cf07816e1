"""glibc's malloc, tuned for a process that holds little for long and much for a moment.

A worker's live memory is small and steady (the window-keys of the open buckets, RocksDB's
memtables), while each fetch passes through megabytes of buffers, lists and records that are
freed a moment later. glibc keeps what is freed inside its heap for reuse, so the resident
memory follows the largest moment the worker has had, not what it holds (docs/performance.md,
"Soak"). Two settings bound that, both no-ops where the C library is not glibc:

- :func:`tune`: a fixed mmap threshold and two arenas, applied once at load;
- :func:`trim`: the heap's free pages handed back to the kernel, run every
  :data:`TRIM_INTERVAL_S` by the worker.

Imports nothing of bucket_app: the worker applies it before anything else is built.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

# glibc's malloc serves a request of at least this many bytes with an mmap of its own, returned
# when freed. By default the threshold rises to the largest block freed (up to 32 MiB), after
# which the fetches' 2 MiB buffers and a batch's large lists come from the heap and leave it
# fragmented: the worker's memory crept up for as long as it ran (docs/performance.md, soak).
# A fixed threshold also stops that rise. An operator's MALLOC_MMAP_THRESHOLD_ is kept.
MMAP_THRESHOLD = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
# glibc gives each thread that allocates while another holds an arena's lock an arena of its
# own, up to 8 per core: a worker's consumer thread (the kernel), web server, snapshot and SQL
# threads and RocksDB's background threads each came to keep free memory of their own, and the
# heap's free part kept growing as long as a soak ran (docs/performance.md, "Soak"). Two arenas
# keep the main loop and the consumer thread off one lock. An operator's MALLOC_ARENA_MAX is
# kept.
ARENA_MAX = 2
_M_ARENA_MAX = -8
# How often the heap's free pages go back to the kernel. glibc returns free memory by itself
# only from the top of the heap, so a free page below a live block stays resident until it is
# reused, and the heap's free part grows with its worst fragmentation so far. malloc_trim walks
# every arena's free chunks and gives their whole pages back (madvise); free chunks smaller
# than a page stay. The pages a later batch needs are faulted back in as it touches them.
TRIM_INTERVAL_S = 10.0


@functools.cache
def _libc() -> Any | None:
    """The process's C library symbols, or None where they cannot be reached; looked up once,
    not at every trim."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tune() -> list[str]:
    """Fix glibc's mmap threshold (MMAP_THRESHOLD) and number of arenas (ARENA_MAX), each
    unless the operator set its variable (MALLOC_MMAP_THRESHOLD_, MALLOC_ARENA_MAX); return
    the names of those set (none where there is no glibc to tune). Call before threads start."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return []
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    done = []
    for variable, parameter, value in (("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD,
                                        MMAP_THRESHOLD),
                                       ("MALLOC_ARENA_MAX", _M_ARENA_MAX, ARENA_MAX)):
        if variable not in os.environ and mallopt(parameter, value):
            done.append(variable)
    return done


def trim() -> bool:
    """Give the free pages of every glibc arena back to the kernel; True if any went back,
    False when none did or there is no glibc. ctypes releases the GIL for the call."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    return bool(malloc_trim(0))
