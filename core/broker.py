"""Fan-out between processes, behind one small interface.

A use case's event reaches the devices through a broker: in one process the
:class:`LocalBroker` hands it straight to the SSE manager; with several
processes a Redis broker (issue "Scale-out") carries it to every process.
Both take and deliver the same :class:`StreamMessage`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable, Protocol

log = logging.getLogger("notify.broker")


@dataclasses.dataclass(frozen=True)
class StreamMessage:
    """One stored event on its way to a user's devices.

    :param user_id: whose devices get it.
    :param cursor: its stream cursor (the event log id).
    :param event: the SSE event name; None for a notification.
    :param data: the ``data:`` payload, one line of JSON.
    :param exclude: a connection id to leave out (the originator).
    """

    user_id: str
    cursor: int
    event: str | None
    data: str
    exclude: str | None = None

    def to_json(self) -> str:
        """Serialise for a wire between processes."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "StreamMessage":
        """The inverse of :meth:`to_json`; raises ``ValueError`` on bad input."""
        try:
            fields = json.loads(text)
            return cls(
                user_id=str(fields["user_id"]),
                cursor=int(fields["cursor"]),
                event=fields.get("event"),
                data=str(fields["data"]),
                exclude=fields.get("exclude"),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a stream message: {exc}") from None


Deliver = Callable[[StreamMessage], Any]


class Broker(Protocol):
    """Carries stream messages to the SSE manager of every process."""

    async def start(self, deliver: Deliver) -> None:
        """Begin delivering every published message to ``deliver``."""

    def publish(self, message: StreamMessage) -> None:
        """Send ``message`` to every process (fire-and-forget)."""

    async def close(self) -> None:
        """Stop delivering and release connections."""

    def healthy(self) -> bool:
        """Whether messages currently reach every process."""


class LocalBroker:
    """The single-process broker: publishing is delivering."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        """Deliver every later :meth:`publish` to ``deliver``."""
        self._deliver = deliver

    def publish(self, message: StreamMessage) -> None:
        """Hand ``message`` to the local SSE manager now."""
        if self._deliver is None:
            return
        try:
            self._deliver(message)
        except Exception:
            # A failed push never fails the request that stored the event.
            log.exception("delivering cursor %s failed", message.cursor)

    async def close(self) -> None:
        """Stop delivering."""
        self._deliver = None

    def healthy(self) -> bool:
        """Always: there is nothing between publisher and subscriber."""
        return True
