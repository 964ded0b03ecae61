"""IOLoop lag: how late the loop runs a timer, sampled every 50 ms.

Everything this process serves shares one loop thread, so time a callback
holds it (a slow query run on the loop, a garbage-collection pause, a
burst of writes) delays every stream and request alike.  A timer due at
``t`` that runs at ``t + d`` was delayed by ``d``: that is the figure.

Two views, both cheap to keep (one list update per sample, 20 a second):

* a cumulative histogram since start, for ``/metrics``: a scraper (or the
  benchmark) diffs two scrapes to get the distribution over any window;
* the last :data:`WINDOW` samples, summarised as ``{p50, p99, max}`` in
  ``GET /api/v1/stats`` under ``loopLagMs``.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
from typing import Any

#: Seconds between samples.
INTERVAL = 0.05
#: Samples in the rolling window of the stats (10 s at 50 ms).
WINDOW = 200
#: Histogram bucket upper bounds in seconds (Prometheus ``le``).  Finer near
#: the 10 ms that matters for latency targets.
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLagMonitor:
    """Samples the running loop's scheduling delay.

    :param float interval: seconds between samples.
    :param int window: samples kept for :meth:`summary`.
    :ivar list counts: samples per bucket of :data:`BUCKETS`, plus one
        overflow bucket at the end (not cumulative).
    :ivar int samples: samples taken since start.
    :ivar float total: sum of every lag, seconds.
    """

    def __init__(self, interval: float = INTERVAL, window: int = WINDOW) -> None:
        self.interval = interval
        self.counts = [0] * (len(BUCKETS) + 1)
        self.samples = 0
        self.total = 0.0
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start sampling on the running loop (idempotent)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def stop(self) -> None:
        """Stop sampling; the figures so far stay readable."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        # asyncio may run a timer up to one clock resolution early.
        self.record(max(0.0, now - self._due))
        self._schedule(now)

    def record(self, lag: float) -> None:
        """Add one sample of ``lag`` seconds."""
        self.counts[bisect.bisect_left(BUCKETS, lag)] += 1
        self.samples += 1
        self.total += lag
        self._recent.append(lag)

    def summary(self) -> dict[str, Any]:
        """The recent window in milliseconds: ``{"p50", "p99", "max", "samples"}``.

        Nearest-rank percentiles; ``None`` figures before the first sample.
        """
        ordered = sorted(self._recent)
        n = len(ordered)

        def rank(q: float) -> float | None:
            return round(ordered[max(0, math.ceil(q * n) - 1)] * 1000, 3) if n else None

        return {"p50": rank(0.5), "p99": rank(0.99), "max": round(ordered[-1] * 1000, 3) if n else None, "samples": n}

    def buckets(self) -> list[tuple[float, int]]:
        """Cumulative ``(upper bound in seconds, count)`` pairs, ending with ``+inf``."""
        out = []
        running = 0
        for bound, count in zip((*BUCKETS, math.inf), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out
