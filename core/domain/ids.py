"""Random identifiers without a system call each.

``secrets.token_hex`` asks the kernel (``getrandom``) for every id, and a
system call releases the GIL: under load a database thread takes it there,
and the loop waits for it back (the create profile showed 9% of the loop's
time inside ``os.urandom``).  Here each thread draws its bytes from its own
pool of ``os.urandom`` output, refilled 4 KiB at a time: the same
kernel-grade randomness, one system call per few hundred ids.
"""

from __future__ import annotations

import os
import threading

POOL_BYTES = 4096

_local = threading.local()


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as ``2 * nbytes`` hex digits (never reused)."""
    pool: bytes = getattr(_local, "pool", b"")
    at: int = getattr(_local, "at", 0)
    if at + nbytes > len(pool):
        pool, at = os.urandom(max(POOL_BYTES, nbytes)), 0
        _local.pool = pool
    _local.at = at + nbytes
    return pool[at : at + nbytes].hex()
