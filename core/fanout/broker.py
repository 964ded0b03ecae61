"""Fan-out between processes, behind one small interface.

A use case's event reaches the devices through a broker: in one process the
:class:`LocalBroker` hands it straight to the SSE manager; with several
processes the Redis broker (:mod:`core.fanout.redis_broker`) carries it to every process.
Both take and deliver the same :class:`StreamMessage`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from core.fanout.messages import StreamMessage

log = logging.getLogger("notify.broker")


Deliver = Callable[[StreamMessage], Any]
Resync = Callable[[], Any]
Stats = Callable[[], dict]


class Broker(Protocol):
    """Carries stream messages to the SSE manager of every process.

    Every implementation passes ``tests/test_broker_contract.py``.
    """

    async def start(self, deliver: Deliver, resync: Resync, stats: Stats) -> None:
        """Begin delivering.

        :param deliver: called on the loop with every message published by
            any process, this one's included, once each.
        :param resync: called on the loop after messages may have been lost
            (the link to other processes was down); the caller then catches
            every open stream up from the database.
        :param stats: this process's stats, for :meth:`instances`.
        """

    def publish(self, message: StreamMessage) -> None:
        """Send ``message`` to every process.

        This process's ``deliver`` gets it at once (before returning); other
        processes get it as soon as the medium carries it.  Never raises:
        a failed push never fails the request that stored the event.
        """

    async def instances(self) -> list[dict]:
        """Stats of every live process (this one included)."""

    async def close(self) -> None:
        """Stop delivering and release connections."""

    def healthy(self) -> bool:
        """Whether messages currently reach every process."""


class LocalBroker:
    """The single-process broker: publishing is delivering."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._stats: Stats | None = None

    async def start(self, deliver: Deliver, resync: Resync, stats: Stats) -> None:
        """Deliver every later :meth:`publish` to ``deliver``."""
        self._deliver = deliver
        self._stats = stats

    def publish(self, message: StreamMessage) -> None:
        """Hand ``message`` to the local SSE manager now."""
        deliver_safely(self._deliver, message)

    async def instances(self) -> list[dict]:
        """Only this process."""
        return [self._stats()] if self._stats is not None else []

    async def close(self) -> None:
        """Stop delivering."""
        self._deliver = None

    def healthy(self) -> bool:
        """Always: there is nothing between publisher and subscriber."""
        return True


def deliver_safely(deliver: Deliver | None, message: StreamMessage) -> None:
    """Call ``deliver(message)``, logging instead of raising.

    The message is stored already; a failed push must not fail the request
    (the device catches up on reconnect).
    """
    if deliver is None:
        return
    try:
        deliver(message)
    except Exception:
        log.exception("delivering cursor %s of a user failed", message.cursor)
