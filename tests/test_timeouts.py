"""Slow clients (slow loris): ``--idle-timeout`` and ``--body-timeout``.

A connection that does not finish its request line and headers within
``--idle-timeout``, or sits idle that long between requests, is closed; so
is one that does not finish its body within ``--body-timeout``.  Neither
ever cuts an open stream, however quiet.  The servers here use timeouts of
a fraction of a second; each test waits for the server to act (the
connection closing), never a fixed time.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.checks import wait_until

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

TIMEOUT = 0.3


@pytest.fixture
def quick(make_server):
    """``await quick()``: a server with short idle and body timeouts."""
    return lambda: make_server(idle_timeout=TIMEOUT, body_timeout=TIMEOUT)


async def connect(server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to ``server``."""
    return await asyncio.open_connection(server.host, server.port)


async def closed_within(reader: asyncio.StreamReader, seconds: float = 5.0) -> bytes:
    """What the server sends before closing; fails if it keeps the connection open."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_half_a_request_line_is_disconnected(quick):
    server = await quick()
    reader, writer = await connect(server)
    writer.write(b"GET /api/v1/sta")
    started = asyncio.get_running_loop().time()
    assert await closed_within(reader) == b""
    assert asyncio.get_running_loop().time() - started >= TIMEOUT * 0.9
    writer.close()


async def test_headers_trickled_slowly_are_disconnected(quick):
    # The deadline is for the whole header block, not between bytes.
    server = await quick()
    reader, writer = await connect(server)
    writer.write(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\n")
    closing = asyncio.ensure_future(reader.read())
    while not closing.done():
        try:
            writer.write(b"X-A: b\r\n")
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.wait([closing], timeout=TIMEOUT / 6)
    assert await asyncio.wait_for(closing, 5) == b""
    writer.close()


async def test_an_idle_kept_alive_connection_is_closed(quick):
    server = await quick()
    reader, writer = await connect(server)
    writer.write(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    assert await closed_within(reader) == b""
    writer.close()


async def test_a_body_trickled_too_slowly_is_disconnected(quick):
    server = await quick()
    reader, writer = await connect(server)
    head = (
        f"POST /api/v1/users/alice/notifications HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {server.token('alice')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\n\r\n{{"
    )
    writer.write(head.encode())
    closing = asyncio.ensure_future(reader.read())
    sent = 0
    while not closing.done() and sent < 900:
        try:
            writer.write(b" ")
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        await asyncio.wait([closing], timeout=TIMEOUT / 6)
    assert await asyncio.wait_for(closing, 5) == b""  # cut off without an answer
    assert sent < 900
    writer.close()
    await wait_until(lambda: server.app.deps.http_counters.in_flight == 0)


async def test_a_quiet_stream_outlives_the_timeouts(quick):
    server = await quick()
    stream = await server.live_stream("alice")  # no ping for 30 s
    # A half-sent request opened after the stream went quiet: once the
    # server has cut it, the stream has been silent longer than the timeout.
    reader, writer = await connect(server)
    writer.write(b"GET /api/v1/sta")
    assert await closed_within(reader) == b""
    writer.close()
    await server.notify("alice", "still here")
    event = await stream.next_event()
    assert event.type == "message" and "still here" in event.data
    await stream.aclose()
