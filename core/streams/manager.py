"""The SSE manager: which devices are open, and pushing frames to them.

One account, many devices: ``user id -> {connection id -> Device}``.  Every
publish is encoded once (:class:`core.streams.sse.Frame`) and the same bytes are
written to every device of the user, straight onto each connection's
IOStream (see ``docs/ARCHITECTURE.md`` for why the handler is bypassed).

A device's lifecycle has one owner, this manager::

    subscribe ──> replaying ──go_live──> live ──> ended(reason)
        (live frames queue,      (frames written     closed | dropped |
         de-duplicated by cursor) directly)          expired | shutdown

Once the headers are out the handler detaches the connection and is gone;
from then on this manager writes, ends (terminator) and closes the stream.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from tornado.ioloop import PeriodicCallback
from tornado.iostream import StreamBufferFullError, StreamClosedError

from core.domain.errors import TooManyRequests
from core.domain.ids import random_hex
from core.streams.sse import PING, Frame, encode_body, encode_event

log = logging.getLogger("notify.sse")

#: Why a device's stream ended.
CLOSED, DROPPED, EXPIRED, SHUTDOWN = "closed", "dropped", "expired", "shutdown"

#: Live frames a replaying device may queue before it counts as too slow.
MAX_PENDING_FRAMES = 10_000

TOKEN_EXPIRED = Frame(encode_event("{}", event="token-expired"))


class Writer(Protocol):
    """Where a device's bytes go (:class:`core.streams.writer.SocketWriter`).

    Raises ``StreamClosedError`` or ``StreamBufferFullError`` from
    :meth:`write` when it cannot take them."""

    #: Unsent bytes it holds before a write raises ``StreamBufferFullError``
    #: (a replay writes in pieces no larger).
    max_buffer: int

    def write(self, frame: Frame) -> None: ...

    async def drain(self) -> None: ...

    def finish(self) -> asyncio.Future[None] | None: ...

    def close(self) -> None: ...


class Device:
    """One open stream of one user (a browser tab, a phone)."""

    __slots__ = ("id", "user_id", "writer", "last_cursor", "pending", "stale", "expires_at", "done", "opened_at")

    def __init__(self, user_id: str, expires_at: float | None) -> None:
        self.id = "c_" + random_hex(8)
        self.user_id = user_id
        self.writer: Writer | None = None
        #: Highest cursor written to this device; later frames at or below it
        #: are duplicates from the replay/live handover and are skipped.
        self.last_cursor = 0
        #: Live frames held back while history is read (replay, catch-up);
        #: None once live.  A None frame marks an event this device skips
        #: (it originated it) but counts as seen.
        self.pending: list[tuple[int | None, Frame | None]] | None = []
        #: Set when messages may have been lost while the device was still
        #: reading history: it catches up once more when it goes live.
        self.stale = False
        self.expires_at = expires_at
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.opened_at = time.monotonic()

    @property
    def ended(self) -> bool:
        """Whether the stream has ended (for whatever reason)."""
        return self.done.done()


class StreamManager:
    """Open streams of this process, and the fan-out to them.

    :param max_devices_per_user: open streams one user may hold here.
    :param keepalive_interval: seconds between ``: ping`` comments.
    :param instance_id: this process's id, reported in stats.
    :param clock: wall clock (seconds) for token expiry; tests may replace it.
    """

    def __init__(
        self,
        max_devices_per_user: int = 10,
        keepalive_interval: float = 30.0,
        instance_id: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_devices_per_user = max_devices_per_user
        self.keepalive_interval = keepalive_interval
        self.instance_id = instance_id
        self._clock = clock
        self._users: dict[str, dict[str, Device]] = {}
        self._devices: dict[str, Device] = {}
        #: ``(expires_at, tie, device id)``: by id, so that an ended device
        #: is not kept alive here until its time comes.
        self._expiries: list[tuple[float, int, str]] = []
        self._tie = itertools.count()
        self._keepalive: PeriodicCallback | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._started = time.monotonic()
        #: Called with a live device whose next cursor skipped ahead (an
        #: event is missing); the wiring makes it catch up from the store.
        self.on_gap: Callable[[Device], Any] | None = None
        self.events_published = 0
        self.frames_sent = 0
        self.connections_dropped = 0
        self.connections_opened = 0
        self._last_body: tuple[str | None, str | None, bytes] = (None, None, b"")
        #: Terminators on their way out (shutdown waits for them).
        self._ending: set[asyncio.Future[None]] = set()

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start the keep-alive timer (one for all connections)."""
        if self._keepalive is None:
            self._keepalive = PeriodicCallback(self._ping_all, self.keepalive_interval * 1000)
            self._keepalive.start()

    def _ping_all(self) -> None:
        # The timer's callback: what it returns is awaited if awaitable, so
        # not the count send_keep_alive returns.
        self.send_keep_alive()

    def stop(self) -> None:
        """Stop the timers; open streams are left as they are."""
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None

    def shutdown(self) -> int:
        """End every stream cleanly (the handler sends the chunked terminator).

        Browsers reconnect, to another instance if there is one, and resume
        from their last event id.  :returns: how many streams were ended.
        """
        devices = list(self._devices.values())
        for device in devices:
            self._end(device, SHUTDOWN)
        return len(devices)

    async def wait_ended(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every ended stream's terminator has left."""
        if self._ending:
            await asyncio.wait(tuple(self._ending), timeout=timeout)

    # -- subscriptions ---------------------------------------------------

    def subscribe(self, user_id: str, expires_at: float | None = None) -> Device:
        """Register a new device of ``user_id`` in the replaying state.

        Done before the history is read, so that no live event can fall
        between the history and the live stream: they queue on the device.

        :raises TooManyRequests: the user already has the maximum of open
            streams on this process.
        """
        devices = self._users.get(user_id)
        if devices is not None and len(devices) >= self.max_devices_per_user:
            raise TooManyRequests(
                f"this user already has {self.max_devices_per_user} open streams",
                code="too_many_devices",
            )
        device = Device(user_id, expires_at)
        self._users.setdefault(user_id, {})[device.id] = device
        self._devices[device.id] = device
        self.connections_opened += 1
        if expires_at is not None:
            heapq.heappush(self._expiries, (expires_at, next(self._tie), device.id))
            self._arm_expiry()
        return device

    def attach(self, device: Device, writer: Writer) -> None:
        """Give ``device`` the writer its frames go to (once headers are out)."""
        device.writer = writer

    def unsubscribe(self, device: Device, reason: str = CLOSED) -> None:
        """Forget ``device`` and end its stream with ``reason``."""
        self._end(device, reason)

    def all_devices(self) -> Iterable[Device]:
        """Every open device of this process."""
        return tuple(self._devices.values())

    def devices_of(self, user_id: str) -> Iterable[Device]:
        """The open devices of ``user_id``."""
        return tuple(self._users.get(user_id, {}).values())

    # -- replay handover -------------------------------------------------

    def send_history(self, device: Device, events: Sequence[tuple[int, str | None, str]]) -> bool:
        """Write replayed events ``(cursor, name, data)``, in cursor order.

        Those at or below the device's last cursor are skipped; the rest go
        out as one write (one chunk, one ``send()``), not one per event: a
        thousand browsers reconnecting at once each replay several.

        :returns: False once the device has ended.
        """
        if device.ended:
            return False
        last = device.last_cursor
        parts = [encode_event(data, event=name, id=cursor) for cursor, name, data in events if cursor > last]
        if not parts:
            return True
        return self._write(device, Frame(b"".join(parts)), events[-1][0])

    def send_now(self, device: Device, frame: Frame) -> bool:
        """Write a frame that has no cursor (``reset``) to ``device`` now."""
        if device.ended:
            return False
        return self._write(device, frame, None)

    def go_live(self, device: Device) -> None:
        """Flush the live frames queued meanwhile, in cursor order, then write directly."""
        pending, device.pending = device.pending, None
        if pending is None:
            # Ended while its history was read (ending drops what was held).
            return
        # Frames from several processes may have arrived out of order.
        pending.sort(key=lambda item: item[0] or 0)
        for cursor, frame in pending:
            if device.ended:
                return
            if cursor is not None and cursor <= device.last_cursor:
                continue
            if frame is None:
                # Skipped (the device originated it); its cursor, if any, counts as seen.
                if cursor is not None:
                    device.last_cursor = cursor
            else:
                self._write(device, frame, cursor)
        if device.stale and self.on_gap is not None and not device.ended:
            device.stale = False
            device.pending = []
            self.on_gap(device)

    def hold(self, device: Device) -> bool:
        """Queue live frames for a live device while it catches up.

        :returns: False if it was already holding (a catch-up is under way).
        """
        if device.pending is not None or device.ended:
            return False
        device.pending = []
        return True

    # -- fan-out ---------------------------------------------------------

    def publish(
        self,
        user_id: str,
        data: str,
        event: str | None = None,
        cursor: int | None = None,
        exclude: str | None = None,
    ) -> int:
        """Push one event to every device of ``user_id``.

        :param data: the ``data:`` payload (one line of JSON).
        :param event: the event name, or None for a notification
            (``onmessage``).
        :param cursor: the event's stream cursor (its ``id:``).
        :param exclude: a connection id left out (the originator).
        :returns: how many devices it was written or queued to.
        """
        devices = self._users.get(user_id)
        if not devices:
            self.events_published += 1
            return 0
        # An event for many users (POST /api/v1/events) differs only in its
        # id line from one user to the next: its body is encoded once.
        last = self._last_body
        if last[0] is data and last[1] == event:
            body = last[2]
        else:
            body = encode_body(data, event)
            self._last_body = (data, event, body)
        raw = b"id: %d\n%b" % (cursor, body) if cursor is not None else body
        return self.publish_frame(user_id, Frame(raw), cursor, exclude)

    def publish_frame(self, user_id: str, frame: Frame, cursor: int | None = None, exclude: str | None = None) -> int:
        """Push an already encoded frame to every device of ``user_id``."""
        self.events_published += 1
        devices = self._users.get(user_id)
        if not devices:
            return 0
        reached = 0
        # A copy: a failed write removes the device from the map mid-loop.
        for device in tuple(devices.values()):
            if self._offer(device, cursor, None if device.id == exclude else frame):
                reached += 1
        return reached

    def _offer(self, device: Device, cursor: int | None, frame: Frame | None) -> bool:
        """Write, queue or skip one event for one device; :returns: written or queued.

        ``frame`` None: the device originated the event and skips it, but
        its cursor counts as seen so it is not taken for a gap.
        """
        if device.pending is not None:
            if len(device.pending) >= MAX_PENDING_FRAMES:
                self._drop(device)
                return False
            device.pending.append((cursor, frame))
            return frame is not None
        if cursor is None:
            return frame is not None and self._write(device, frame, None)
        if cursor <= device.last_cursor:
            return False
        if cursor > device.last_cursor + 1 and self.on_gap is not None:
            # The event before this one has not arrived (still on its way
            # from another process, or lost while the broker was down):
            # hold this one and read the missing ones from the store.
            device.pending = [(cursor, frame)]
            self.on_gap(device)
            return frame is not None
        if frame is None:
            device.last_cursor = cursor
            return False
        return self._write(device, frame, cursor)

    def send_keep_alive(self, user_id: str | None = None) -> int:
        """Write ``: ping`` to the live devices of ``user_id`` (or of everyone).

        A failed ping write is a disconnect.  :returns: pings written.
        """
        if user_id is None:
            devices: Iterable[Device] = tuple(self._devices.values())
        else:
            devices = self.devices_of(user_id)
        sent = 0
        for device in devices:
            if device.writer is not None and self._write(device, PING, None):
                sent += 1
        return sent

    # -- monitoring ------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Counters of this process, camelCase as on the wire."""
        return {
            "activeUsers": len(self._users),
            "totalDevices": len(self._devices),
            "maxDevicesPerUser": max((len(d) for d in self._users.values()), default=0),
            "deviceLimitPerUser": self.max_devices_per_user,
            "eventsPublished": self.events_published,
            "framesSent": self.frames_sent,
            "connectionsOpened": self.connections_opened,
            "connectionsDropped": self.connections_dropped,
            "uptimeSeconds": round(time.monotonic() - self._started, 3),
            "instanceId": self.instance_id,
        }

    def device_count(self) -> int:
        """Streams open on this process now."""
        return len(self._devices)

    def user_device_counts(self) -> dict[str, int]:
        """``user id -> open devices`` (for admins only: it names users)."""
        return {user_id: len(devices) for user_id, devices in self._users.items()}

    def log_state(self) -> None:
        """Log the stats and each user's device count (debug level for users)."""
        log.info("[SSE State] %s", self.get_stats())
        for user_id, devices in self._users.items():
            log.debug("  - %s: %d device(s)", user_id, len(devices))

    # -- internals -------------------------------------------------------

    def _write(self, device: Device, frame: Frame, cursor: int | None) -> bool:
        writer = device.writer
        if writer is None:
            return False
        try:
            writer.write(frame)
        except StreamClosedError:
            self._end(device, CLOSED)
            return False
        except StreamBufferFullError:
            self._drop(device)
            return False
        self.frames_sent += 1
        if cursor is not None:
            device.last_cursor = cursor
        return True

    def _drop(self, device: Device) -> None:
        """Close a device that stopped reading; its reconnect replays."""
        self.connections_dropped += 1
        log.info("dropped slow stream %s of a user (unsent data over the bound)", device.id)
        if device.writer is not None:
            device.writer.close()
        self._end(device, DROPPED)

    def _end(self, device: Device, reason: str) -> None:
        devices = self._users.get(device.user_id)
        if devices is not None and devices.pop(device.id, None) is not None and not devices:
            del self._users[device.user_id]
        self._devices.pop(device.id, None)
        device.pending = None
        if device.done.done():
            return
        device.done.set_result(reason)
        writer = device.writer
        if writer is not None:
            # The stream is ours since the handler detached it: ending it
            # is ours too.  Expiry and shutdown end the response cleanly (the
            # browser reconnects with its Last-Event-ID); otherwise the
            # connection is simply closed.
            if reason in (EXPIRED, SHUTDOWN):
                ending = writer.finish()
                if ending is not None:
                    self._ending.add(ending)
                    ending.add_done_callback(self._ending.discard)
            else:
                writer.close()
        # Ended devices stay in the expiry heap until their time comes; keep
        # a churn of short connections from growing it without bound.
        if len(self._expiries) > 2 * len(self._devices) + 1024:
            self._expiries = [entry for entry in self._expiries if entry[2] in self._devices]
            heapq.heapify(self._expiries)

    def _arm_expiry(self) -> None:
        if not self._expiries:
            return
        when = self._expiries[0][0]
        if self._expiry_timer is not None and self._expiry_timer.when() <= self._loop_time_for(when):
            return
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        loop = asyncio.get_running_loop()
        self._expiry_timer = loop.call_at(self._loop_time_for(when), self._expire)

    def _loop_time_for(self, wall: float) -> float:
        loop = asyncio.get_running_loop()
        return loop.time() + max(0.0, wall - self._clock())

    def _expire(self) -> None:
        """End the streams whose credential has expired, with ``token-expired``."""
        self._expiry_timer = None
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            _, _, device_id = heapq.heappop(self._expiries)
            device = self._devices.get(device_id)
            if device is None:
                continue
            if device.writer is not None:
                self._write(device, TOKEN_EXPIRED, None)
            self._end(device, EXPIRED)
        # Forget ended devices at the head so the heap does not hold them.
        while self._expiries and self._expiries[0][2] not in self._devices:
            heapq.heappop(self._expiries)
        self._arm_expiry()
