"""``GET /api/v1/users/{userId}/notifications/stream``: the SSE endpoint.

The handler authenticates, subscribes the device (so live events queue from
that moment), sends the headers with ``: connected`` and ``ready`` through
Tornado, then detaches the connection's IOStream from the HTTP layer and hands it to
the SSE manager, which writes every later frame straight onto it and ends
the response.  The handler is done once the missed events are replayed.
"""

from __future__ import annotations

from tornado.iostream import StreamClosedError

from core.auth import require_reader
from core.connections import SHUTDOWN, Device
from core.sockwriter import SocketWriter
from core.sse import encode_comment, encode_event
from core.validation import check_user_id, compact_json, parse_cursor
from handlers.base import BaseHandler, log


class StreamHandler(BaseHandler):
    """The notification stream of one user, for one device."""

    _device: Device | None = None

    async def get(self, user_id: str) -> None:
        """Open the stream, replay what was missed, then stay live."""
        principal = await self.authenticate(allow_query=True)
        require_reader(principal, check_user_id(user_id))
        after = parse_cursor(self.request.headers.get("Last-Event-ID") or self.get_query_argument("lastEventId", None))
        manager = self.deps.manager
        device = manager.subscribe(user_id, principal.expires_at)
        self._device = device
        try:
            start = await self.deps.service.plan_stream(device, after)
        except Exception:
            # Nothing is sent yet: the client gets a clean JSON error (503
            # when the database is down) and EventSource may retry.
            manager.unsubscribe(device)
            raise

        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache, no-store")
        self.set_header("X-Accel-Buffering", "no")
        self.write(encode_comment("connected"))
        ready = {"connectionId": device.id, "userId": user_id, "instanceId": self.deps.instance_id}
        self.write(encode_event(compact_json(ready), event="ready", retry=self.deps.config.retry_ms))
        try:
            await self.flush()
        except StreamClosedError:
            manager.unsubscribe(device)
            return
        if device.ended:
            return
        # Take the connection over from the HTTP layer, as Tornado's own
        # WebSocket handler does: the headers and the first frames are on
        # the wire and nothing else will be written through Tornado, so this
        # handler, its request, the HTTP connection and the IOStream can all
        # be freed while the stream stays open (most of an open stream's
        # memory).  The manager writes, ends and closes the socket from
        # here; see docs/ARCHITECTURE.md.
        chunked = self.request.connection._chunking_output  # type: ignore[attr-defined]
        stream = self.detach()
        self._device = None  # the writer watches the connection from now on
        self.on_finish()
        self.application.log_request(self)
        writer = SocketWriter.take_over(
            stream,
            chunked=chunked,
            max_buffer=self.deps.config.max_buffer_kb * 1024,
            on_close=lambda: manager.unsubscribe(device),
        )
        if writer is None:
            return
        manager.attach(device, writer)
        if device.ended:
            return
        try:
            await self.deps.service.replay(manager, device, start)
        except Exception:
            # The history could not be read (database down): end the stream
            # cleanly rather than leave a gap; the browser reconnects and
            # the replay is tried again from the same Last-Event-ID.
            log.warning("replay failed for stream %s; ending it so the client retries", device.id, exc_info=True)
            manager.unsubscribe(device, SHUTDOWN)

    def on_connection_close(self) -> None:
        """The client went away before the stream was taken over: forget the device."""
        if self._device is not None:
            self.deps.manager.unsubscribe(self._device)
