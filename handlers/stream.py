"""``GET /api/v1/users/{userId}/notifications/stream``: the SSE endpoint.

Opening a stream: authenticate, subscribe the device (so live events queue
from that moment), plan where it starts (:func:`open_stream`, the route);
then the door sends the headers with ``: connected`` and ``ready``
(:func:`hello`) and hands the socket over from the HTTP layer to the SSE
manager (:func:`hand_over`), which writes every later frame straight onto
it and ends the response.  The missed events are replayed from there.
"""

from __future__ import annotations

import socket
from typing import Any

from tornado.iostream import IOStream

from core.domain.auth import Principal, require_reader
from core.domain.errors import BadRequest
from core.domain.validation import check_user_id, compact_json, parse_cursor
from core.streams.manager import SHUTDOWN, Device
from core.streams.replay import StreamStart
from core.streams.sse import encode_comment, encode_event
from core.streams.writer import SocketWriter
from handlers.call import Call, Deps, StreamOpening
from handlers.http import log

#: The headers of a stream's answer (on top of the JSON defaults, whose
#: Content-Type they replace).
STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",
}


async def plan_stream(
    deps: Deps, principal: Principal, user_id: str, last_event_id: str | None
) -> tuple[Device, StreamStart]:
    """Check access, subscribe the device and decide where it starts.

    :raises DomainError: no access, a bad ``Last-Event-ID``, too many
        devices, or the database down (nothing is subscribed then).
    """
    require_reader(principal, check_user_id(user_id))
    after = parse_cursor(last_event_id)
    manager = deps.manager
    device = manager.subscribe(user_id, principal.expires_at)
    try:
        start = await deps.replay.plan(device, after)
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


async def hand_over(
    deps: Deps, device: Device, start: StreamStart, stream: socket.socket | IOStream, chunked: bool
) -> None:
    """Give the detached connection to the manager and replay what was missed.

    :param stream: what the connection's ``detach()`` returned: the socket
        (:mod:`core.transport.http1`) or Tornado's own IOStream.
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
        await deps.replay.replay(device, start)
    except Exception:
        # The history could not be read (database down): end the stream
        # cleanly rather than leave a gap; the browser reconnects and
        # the replay is tried again from the same Last-Event-ID.
        log.warning("replay failed for stream %s; ending it so the client retries", device.id, exc_info=True)
        manager.unsubscribe(device, SHUTDOWN)


def chunked_output(connection: Any) -> bool:
    """Whether the stream's answer is chunk-framed on ``connection``.

    :mod:`core.transport.http1` says so publicly; Tornado's own
    ``HTTP1Connection`` (which serves the same application in the tests
    that compare the two layers) keeps it in a private field of Tornado
    6.6, which ``requirements.txt`` pins (``tests/test_tornado_private.py``
    fails if an upgrade changes it).
    """
    chunked = getattr(connection, "chunked_output", None)
    if chunked is None:
        chunked = connection._chunking_output
    return bool(chunked)


async def open_stream(call: Call, user_id: str) -> StreamOpening:
    """The route: who may open this stream, from where it starts.

    ``Last-Event-ID``, else ``?lastEventId=``; a malformed one (not a
    number, not even UTF-8) is treated as absent, as the contract says.
    """
    principal = await call.principal(allow_query=True)
    last_event_id = call.headers.get("Last-Event-ID")
    if not last_event_id:
        try:
            last_event_id = call.query_argument("lastEventId")
        except BadRequest:
            last_event_id = None
    device, start = await plan_stream(call.deps, principal, user_id, last_event_id)
    return StreamOpening(device, start)
