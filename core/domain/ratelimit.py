"""Token buckets per principal: how often one caller may publish.

Each key (a token's subject) has a bucket of ``burst`` tokens that refills
at ``rate`` tokens a second; a publish spends one.  An empty bucket says how
long until the next token, which becomes the 429's ``Retry-After``.

Memory stays bounded (denial-of-service guard): a bucket untouched for
``burst / rate`` seconds is full again, exactly like one never created, so
it is dropped; and past ``max_keys`` buckets the least recently used goes
first, which can only ever let its owner publish a little early.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

#: Buckets kept at most, whatever the number of principals.
MAX_KEYS = 100_000


class RateLimiter:
    """Per-key token buckets.

    :param rate: tokens added per second (greater than 0).
    :param burst: the most tokens a bucket holds; 0 means ``ceil(rate)``
        (one second's worth), at least 1.
    :param clock: monotonic seconds; tests pass a hand-driven one.
    :param max_keys: buckets kept at most (least recently used dropped).
    """

    def __init__(
        self, rate: float, burst: float = 0, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be greater than 0")
        self.rate = float(rate)
        self.burst = float(burst) if burst >= 1 else float(max(1, math.ceil(rate)))
        self.clock = clock
        self.max_keys = max_keys
        # key -> (tokens left, when counted), least recently used first.
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        """How many buckets are held."""
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one of ``key``'s tokens.

        :returns: 0.0 when a token was spent (go ahead), otherwise the
            seconds until one will be there (nothing is spent).
        """
        now = self.clock()
        self._drop_idle(now)
        tokens, counted = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - counted) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def _drop_idle(self, now: float) -> None:
        # Oldest first, and every take() moves its key to the end with the
        # current time, so the scan stops at the first bucket still in use:
        # constant time per call, amortized.
        full_after = self.burst / self.rate
        buckets = self._buckets
        while buckets:
            key = next(iter(buckets))
            if now - buckets[key][1] < full_after:
                return
            del buckets[key]
