"""Replay: bringing a new or lagging stream from its cursor to the live edge.

A new stream is subscribed first (live events queue on its device from that
moment), then :meth:`Replayer.plan` reads where it starts: at the user's
last cursor, from its ``Last-Event-ID``, or, when history no longer
reaches that far, with ``event: reset``.  Once its headers are out,
:meth:`Replayer.replay` writes the missed events page by page and lets the
device go live; the manager skips any cursor already sent, so nothing is
missing and nothing comes twice during the hand-over.  A live device whose
cursor skips ahead (a lost message) or every device after the broker lost
messages catches up the same way (:meth:`Replayer.catch_up`).

The history is read through the use cases (:mod:`core.domain.service`);
what is delivered, and when, is decided here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from core.domain.validation import compact_json
from core.streams.manager import SHUTDOWN, Device, StreamManager
from core.streams.sse import Frame, encode_event

log = logging.getLogger("notify.replay")

#: Events read from the log per query while replaying.
REPLAY_PAGE = 500


@dataclasses.dataclass(frozen=True)
class StreamStart:
    """Where a new stream begins: its cursor, and whether it replays or resets first."""

    cursor: int
    replay: bool = False
    reset: bool = False
    #: The first page of the replay, read together with the bounds (one
    #: database round trip per reconnect instead of two).
    first_page: list | None = None


#: Bytes a replayed event adds to its data: the ``id:``, ``event:`` and
#: ``data:`` prefixes, line ends, and its share of the chunk framing.
_EVENT_OVERHEAD = 128


def _within(rows: list, budget: int) -> list[list]:
    """``rows`` (``(cursor, name, data)``) cut into runs of at most ``budget`` encoded bytes.

    Every run holds at least one row, however large; ``budget`` 0 or less
    keeps the rows together.
    """
    if budget <= 0 or sum(len(row[2] or "") for row in rows) * 4 + (_EVENT_OVERHEAD + 64) * len(rows) <= budget:
        # Certainly within (UTF-8 takes at most 4 bytes a character, a name
        # at most 64): no need to measure (the usual page of small events).
        return [rows] if rows else []
    pieces: list[list] = []
    piece: list = []
    size = 0
    for row in rows:
        data = row[2]
        cost = _EVENT_OVERHEAD + len(row[1] or "") + (len(data.encode("utf-8")) if data else 0)
        if piece and size + cost > budget:
            pieces.append(piece)
            piece, size = [], 0
        piece.append(row)
        size += cost
    if piece:
        pieces.append(piece)
    return pieces


class Replayer:
    """Replays and catch-ups of one process's streams.

    :param manager: the SSE manager holding the devices.
    :param history: reads a user's stream events (``stream_bounds``,
        ``events_after``): the :class:`~core.domain.service.NotificationService`.
    """

    def __init__(self, manager: StreamManager, history: Any) -> None:
        self.manager = manager
        self.history = history

    async def plan(self, device: Device, after: int | None) -> StreamStart:
        """Decide where a new stream starts; call before sending ``ready``.

        Without ``after`` the device starts at the user's last cursor:
        events committed from now on (cursor above it) reach the device,
        and a later cursor skipping ahead is recognised as a gap.  With
        ``after`` it replays from there, unless history no longer reaches
        back that far (retention) or ``after`` is beyond the last cursor
        (another database): then it gets ``event: reset``.
        """
        last, oldest, page = await self.history.stream_bounds(device.user_id, after, REPLAY_PAGE)
        if after is None:
            return StreamStart(cursor=last)
        # History reaches back to ``after`` when nothing after it is missing:
        # the oldest event kept is at most the one right after it.
        missing = after < last and (oldest is None or oldest > after + 1)
        if after > last or missing:
            return StreamStart(cursor=last, reset=True)
        return StreamStart(cursor=after, replay=True, first_page=page)

    async def replay(self, device: Device, start: StreamStart) -> None:
        """Bring a subscribed, attached device from ``start`` to the live stream.

        The device was subscribed before :meth:`plan`, so live events
        queue on it meanwhile; the manager skips any cursor already sent.
        """
        if device.ended:
            return
        if start.reset:
            reset = Frame(encode_event(compact_json({"reason": "history-unavailable"}), event="reset", id=start.cursor))
            self.manager.send_now(device, reset)
        device.last_cursor = start.cursor
        if start.replay:
            await self._send_history(device, start.first_page)
        else:
            self.manager.go_live(device)

    async def catch_up(self, device: Device) -> None:
        """Write what a live device missed since its last cursor, then go live again.

        Called when a cursor skipped ahead, or after the broker lost
        messages.  A failure ends the stream, so the client reconnects and
        replays instead of silently missing events.
        """
        if device.pending is None:
            self.manager.hold(device)
        try:
            await self._send_history(device)
        except Exception:
            log.warning("catch-up of stream %s failed; ending it so the client replays", device.id, exc_info=True)
            self.manager.unsubscribe(device, SHUTDOWN)

    async def catch_up_all(self) -> None:
        """Catch every live stream up (after the broker was disconnected)."""
        devices = []
        for device in self.manager.all_devices():
            if self.manager.hold(device):
                devices.append(device)
            else:
                # Still reading history: its last page may predate what was
                # lost, so it catches up again once it goes live.
                device.stale = True
        await asyncio.gather(*(self.catch_up(device) for device in devices))

    async def _send_history(self, device: Device, first_page: list | None = None) -> None:
        """Write the device's events after its last cursor, page by page, then go live.

        :param first_page: the events after the device's cursor, already
            read (by :meth:`plan`); the rest are read here.
        """
        rows = first_page
        while True:
            if rows is None:
                rows = await self.history.events_after(device.user_id, device.last_cursor, REPLAY_PAGE)
            # A page of large events can be megabytes: it goes out in writes
            # no larger than the slow-reader bound, each after the one
            # before has left user space, so that a client reading as fast
            # as it can is never taken for a slow one.
            pieces = _within(rows, device.writer.max_buffer if device.writer is not None else 0)
            for index, piece in enumerate(pieces):
                if index and not await self._drained(device):
                    return
                if not self.manager.send_history(device, piece):
                    return
            if len(rows) < REPLAY_PAGE:
                break
            rows = None
            # Let this page leave user space before reading the next, so a
            # long history never trips the slow-reader bound.
            if not await self._drained(device):
                return
        self.manager.go_live(device)

    async def _drained(self, device: Device) -> bool:
        """Wait until what was written to ``device`` has left user space; False if it closed."""
        writer = device.writer
        if writer is None:
            # Never attached: no connection to wait for.
            self.manager.unsubscribe(device)
            return False
        try:
            await writer.drain()
        except Exception:
            self.manager.unsubscribe(device)
            return False
        return True
