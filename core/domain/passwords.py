"""The password-hashing pool: scrypt on threads of its own, behind a bounded wait.

A password check is scrypt (``core.domain.auth``: n = 2^14, r = 8, p = 1), 60 to
80 ms of CPU and 16 MiB of memory on this VM.  CPython's ``hashlib.scrypt``
releases the GIL while OpenSSL computes (``Py_BEGIN_ALLOW_THREADS`` around
``EVP_PBE_scrypt`` in ``Modules/_hashopenssl.c``; measured too: a thread
hashing back to back leaves another thread's Python loop pauses of at most
about 25 ms, where one hash takes 60-80 ms, and two hashing threads do more
hashes than one while two pure-Python threads do not), so threads are the
right tool: the loop keeps running while a thread hashes.  What must be
bounded is CPU and waiting, not the GIL:

- The hashing runs here, not on the database reader threads.  There, a
  flood of 24 wrong-password logins queued every other read behind 24
  hashes (a user's ``unread-count`` went from about 1 ms to 200-600 ms).
- One thread on a machine of up to two cores (a core stays free for the
  IOLoop and the database), two above that: logins never take more than
  that share of the CPU, however many arrive.
- At most :data:`WAITING_PER_THREAD` jobs wait per thread.  A login past
  that is refused at once with 503 ``login_busy`` and ``Retry-After``
  rather than queued for seconds (a guesser is slowed down, nobody else).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Any

from core.domain.errors import Unavailable

#: Jobs that may wait per hashing thread, besides the one it runs.
WAITING_PER_THREAD = 4
#: Seconds a refused login is told to wait (``Retry-After``): the bound
#: is a few hashes deep, so the pool has room again well within it.
RETRY_AFTER = 1


def default_threads() -> int:
    """Hashing threads for this machine: 1 up to two cores, 2 above."""
    return 1 if (os.cpu_count() or 1) <= 2 else 2


class PasswordPool:
    """A few threads that only hash passwords, with a bounded number of jobs.

    Used from the IOLoop: :meth:`run` is awaited there.  :meth:`close`
    stops it (``NotifyApp.stop``, or whoever made it).

    :param threads: hashing threads (:func:`default_threads` when None).
    :param waiting_per_thread: jobs that may wait per thread beyond the
        one it runs; more get :class:`~core.domain.errors.Unavailable`.
    """

    def __init__(self, threads: int | None = None, waiting_per_thread: int = WAITING_PER_THREAD) -> None:
        self.threads = threads if threads is not None else default_threads()
        if self.threads < 1 or waiting_per_thread < 0:
            raise ValueError("a password pool needs at least one thread and a non-negative wait")
        #: Jobs taken at most: running plus waiting.
        self.capacity = self.threads * (1 + waiting_per_thread)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="password")
        # Released by the thread that ran the job, so a job counts until it
        # has really finished, even if whoever awaited it has gone.
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._jobs = 0
        self._lock = threading.Lock()

    @property
    def jobs(self) -> int:
        """Jobs taken and not finished yet (running or waiting)."""
        return self._jobs

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a hashing thread; :returns: its result.

        :raises Unavailable: ``login_busy`` with ``Retry-After`` when
            :attr:`capacity` jobs are already taken; ``unavailable`` once
            the pool is closed.
        """
        if not self._slots.acquire(blocking=False):
            raise Unavailable(
                "too many logins at once; retry after the Retry-After seconds",
                code="login_busy",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        with self._lock:
            self._jobs += 1
        try:
            job = self._executor.submit(self._job, fn, args)
        except RuntimeError:  # shut down: the server is stopping
            self._finished()
            raise Unavailable("the server is stopping", code="unavailable") from None
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if job.cancelled():  # dropped from the queue by close()
                raise Unavailable("the server is stopping", code="unavailable") from None
            raise

    def _job(self, fn: Callable[..., Any], args: tuple) -> Any:
        try:
            return fn(*args)
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._lock:
            self._jobs -= 1
        self._slots.release()

    def close(self) -> None:
        """Take no more jobs and drop those waiting; a hash under way finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
