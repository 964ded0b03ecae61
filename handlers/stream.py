"""``GET /api/v1/users/{userId}/notifications/stream``: the SSE endpoint.

The handler authenticates, subscribes the device (so live events queue from
that moment), sends the headers with ``: connected`` and ``ready`` through
Tornado, then hands the connection's IOStream to the SSE manager, which
writes every later frame straight onto it.  The handler itself only waits
for the manager to say the stream has ended, and finishes the response.
"""

from __future__ import annotations

from tornado.iostream import StreamClosedError

from core.auth import require_reader
from core.connections import CLOSED, DROPPED, SHUTDOWN, Device, IOStreamWriter
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
        connection = self.request.connection
        # Safe to bypass the handler from here: the headers and the first
        # chunk are on the stream, our write buffer is empty, no transform
        # rewrites chunks (compression is off), and the response is not
        # finished until the manager says so.  See docs/ARCHITECTURE.md.
        manager.attach(
            device,
            IOStreamWriter(
                connection.stream,
                chunked=connection._chunking_output,
                max_buffer=self.deps.config.max_buffer_kb * 1024,
            ),
        )
        try:
            await self.deps.service.replay(manager, device, start)
        except Exception:
            # The history could not be read (database down): end the stream
            # cleanly rather than leave a gap; the browser reconnects and
            # the replay is tried again from the same Last-Event-ID.
            log.warning("replay failed for stream %s; ending it so the client retries", device.id, exc_info=True)
            manager.unsubscribe(device, SHUTDOWN)
        reason = await device.done
        if reason not in (CLOSED, DROPPED) and not connection.stream.closed():
            # token expired or shutdown: the chunked terminator ends the
            # response cleanly, so the browser reconnects.
            self.finish()

    def on_connection_close(self) -> None:
        """The client went away: forget the device."""
        if self._device is not None:
            self.deps.manager.unsubscribe(self._device)
