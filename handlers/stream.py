"""``GET /api/v1/users/{userId}/notifications/stream``: the SSE endpoint.

Opening a stream: authenticate, subscribe the device (so live events queue
from that moment), plan where it starts, send the headers with
``: connected`` and ``ready``, then hand the socket over from the HTTP
layer to the SSE manager, which writes every later frame straight onto it
and ends the response.  The missed events are replayed from there.

Two doors lead here, sharing every step below: :class:`StreamHandler` (a
RequestHandler, for every shape of request) and
:class:`handlers.fastlane.FastStream` (the usual shape, without the
RequestHandler machinery; see that module).
"""

from __future__ import annotations

import socket
from typing import Any

from tornado.iostream import StreamClosedError

from core.domain.auth import Principal, require_reader
from core.streams.manager import SHUTDOWN, Device
from core.domain.errors import BadRequest
from core.domain.service import StreamStart
from core.streams.writer import SocketWriter
from core.streams.sse import encode_comment, encode_event
from core.domain.validation import check_user_id, compact_json, parse_cursor
from handlers.base import BaseHandler, Deps, log

#: The headers of a stream's answer (on top of the JSON defaults, whose
#: Content-Type they replace).
STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",
}


async def plan_stream(deps: Deps, principal: Principal, user_id: str, last_event_id: str | None) -> tuple[Device, StreamStart]:
    """Check access, subscribe the device and decide where it starts.

    :raises DomainError: no access, a bad ``Last-Event-ID``, too many
        devices, or the database down (nothing is subscribed then).
    """
    require_reader(principal, check_user_id(user_id))
    after = parse_cursor(last_event_id)
    manager = deps.manager
    device = manager.subscribe(user_id, principal.expires_at)
    try:
        start = await deps.service.plan_stream(device, after)
    except Exception:
        # Nothing is sent yet: the client gets a clean JSON error (503
        # when the database is down) and EventSource may retry.
        manager.unsubscribe(device)
        raise
    return device, start


def hello(deps: Deps, device: Device) -> bytes:
    """The first frames of a stream: ``: connected`` and ``event: ready``."""
    ready = {"connectionId": device.id, "userId": device.user_id, "instanceId": deps.instance_id}
    return encode_comment("connected") + encode_event(compact_json(ready), event="ready", retry=deps.config.retry_ms)


async def hand_over(deps: Deps, device: Device, start: StreamStart, stream: socket.socket | Any, chunked: bool) -> None:
    """Give the detached connection to the manager and replay what was missed.

    :param stream: what the connection's ``detach()`` returned.
    :param chunked: whether the answer is chunk-framed (HTTP/1.1).
    """
    manager = deps.manager
    writer = SocketWriter.take_over(
        stream,
        chunked=chunked,
        max_buffer=deps.config.max_buffer_kb * 1024,
        on_close=lambda: manager.unsubscribe(device),
    )
    if writer is None:
        return
    manager.attach(device, writer)
    if device.ended:
        return
    try:
        await deps.service.replay(manager, device, start)
    except Exception:
        # The history could not be read (database down): end the stream
        # cleanly rather than leave a gap; the browser reconnects and
        # the replay is tried again from the same Last-Event-ID.
        log.warning("replay failed for stream %s; ending it so the client retries", device.id, exc_info=True)
        manager.unsubscribe(device, SHUTDOWN)


def _chunked_output(connection: Any) -> bool:
    """Whether the stream's answer is chunk-framed on ``connection``.

    :mod:`core.transport.http1` says so publicly; Tornado's own ``HTTP1Connection``
    (which serves the same application in the tests that compare the two
    layers) keeps it in a private field of Tornado 6.6, which
    ``requirements.txt`` pins.
    """
    chunked = getattr(connection, "chunked_output", None)
    if chunked is None:
        chunked = connection._chunking_output
    return bool(chunked)


class StreamHandler(BaseHandler):
    """The notification stream of one user, for one device."""

    _device: Device | None = None

    async def get(self, user_id: str) -> None:
        """Open the stream, replay what was missed, then stay live."""
        principal = await self.authenticate(allow_query=True)
        last_event_id = self.request.headers.get("Last-Event-ID") or self._query_cursor()
        device, start = await plan_stream(self.deps, principal, user_id, last_event_id)
        self._device = device
        for name, value in STREAM_HEADERS.items():
            self.set_header(name, value)
        self.write(hello(self.deps, device))
        try:
            await self.flush()
        except StreamClosedError:
            self.deps.manager.unsubscribe(device)
            return
        if device.ended:
            return
        # Take the connection over from the HTTP layer, as Tornado's own
        # WebSocket handler does: the headers and the first frames are on
        # the wire and nothing else will be written through Tornado, so this
        # handler and its request can be freed while the stream stays open
        # (most of an open stream's memory).  See docs/ARCHITECTURE.md.
        chunked = _chunked_output(self.request.connection)
        stream = self.detach()
        self._device = None  # the writer watches the connection from now on
        self.application.log_request(self)
        await hand_over(self.deps, device, start, stream, chunked)

    def _query_cursor(self) -> str | None:
        """``?lastEventId=``; one that is not UTF-8 is malformed, so treated as absent (the contract)."""
        try:
            return self.get_query_argument("lastEventId", None)
        except BadRequest:
            return None

    def on_connection_close(self) -> None:
        """The client went away before the stream was taken over: forget the device."""
        if self._device is not None:
            self.deps.manager.unsubscribe(self._device)
