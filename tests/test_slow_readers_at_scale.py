"""Slow readers at scale: 200 clients that never read, beside 2,000 that do.

CONTRACT.md: "A connection that does not read (its unsent data passes a
bound) is closed; it loses nothing, because its reconnect replays."  Here
that holds with many connections at once: broadcasts to 20 users with 110
open streams each (100 reading, 10 not reading at all, from sockets with a
4 KiB receive buffer) go on until every non-reader has been dropped, and

* every reader gets every event, in order, none twice (no reader is held
  back or dropped because others stall);
* exactly the 200 non-readers are dropped, and the stats say so
  (``connectionsDropped`` 200, ``totalDevices`` back to 2,000);
* the server's memory stays bounded: no stream ever holds more unsent data
  than ``--max-buffer-kb`` in the server's queue plus its kernel send
  buffer, which the server fixes at the same size (``SO_SNDBUF``; Linux
  doubles it).  Left to autotuning, the kernel would hold up to 4 MiB for
  each non-reader on loopback (``net.ipv4.tcp_wmem``): 800 MiB here.

The readers are light clients in the test process (an ``asyncio.Protocol``
each, with the suite's chunked decoder and WHATWG SSE parser, keeping only
cursors), so 2,200 streams fit in a few seconds.  Marked ``scale``: it
opens 4,400 sockets in one process (server and clients), so it needs that
many file descriptors; deselect with ``-m "not scale"``.
"""

from __future__ import annotations

import asyncio
import codecs
import fcntl
import json
import os
import resource
import socket
import struct
import termios
import urllib.parse

import pytest

from tests.support.checks import wait_until
from tests.support.sse import ChunkedDecoder, SSEParser

pytestmark = [pytest.mark.timeout(60), pytest.mark.scale, pytest.mark.slow]

USERS = 20
READERS_PER_USER = 100
NON_READERS_PER_USER = 10
READERS = USERS * READERS_PER_USER
NON_READERS = USERS * NON_READERS_PER_USER
MAX_BUFFER_KB = 16
#: A few KiB per event: a non-reader passes its bound within about 12 rounds.
BLOB = "x" * 4000
#: A non-reader is dropped after about (16 + 32 + 4) KiB; far more rounds
#: than that means the bound is not working.
MAX_ROUNDS = 60
EVENT = "scale.round"
#: Streams opened at once (as a browser population would, not all in one go).
CONNECT_CONCURRENCY = 200


class Tally:
    """Counts events received by all readers; wakes a waiter at a target."""

    def __init__(self) -> None:
        self.count = 0
        self._target = 0
        self._reached: asyncio.Future[None] | None = None

    def add(self) -> None:
        """One more event received."""
        self.count += 1
        if self._reached is not None and self.count >= self._target and not self._reached.done():
            self._reached.set_result(None)

    async def wait_count(self, target: int, timeout: float) -> None:
        """Wait until :attr:`count` reaches ``target``."""
        if self.count >= target:
            return
        self._target = target
        self._reached = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._reached, timeout)
        except TimeoutError:
            raise AssertionError(f"readers got {self.count} of {target} events within {timeout} s") from None


class Reader(asyncio.Protocol):
    """A stream client that reads everything as it comes and keeps only ``(cursor, round)`` pairs.

    :ivar events: ``(cursor, round)`` of each ``scale.round`` event, in arrival order.
    :ivar others: the types of any other events after ``ready``.
    :ivar closed: resolved when the connection closes.
    """

    def __init__(self, request: bytes, tally: Tally) -> None:
        loop = asyncio.get_running_loop()
        self._request = request
        self._tally = tally
        self.transport: asyncio.BaseTransport | None = None
        self._head = bytearray()
        self._in_body = False
        self._decoder = ChunkedDecoder()
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._parser = SSEParser()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.events: list[tuple[int, int]] = []
        self.others: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the request."""
        self.transport = transport
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        """Parse the response head, then the chunked event stream."""
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self._head.split(b" ", 2)[1]
            if status != b"200":
                self.ready.set_exception(AssertionError(f"stream answered {bytes(self._head[:200])!r}"))
                return
            self._in_body = True
            data = bytes(self._head[end + 4 :])
        for event in self._parser.feed(self._text.decode(self._decoder.feed(data))):
            if event.type == EVENT:
                self.events.append((int(event.id), json.loads(event.data)["round"]))
                self._tally.add()
            elif event.type == "ready" and not self.ready.done():
                self.ready.set_result(None)
            else:
                self.others.append(event.type)

    def connection_lost(self, exc: Exception | None) -> None:
        """Note the close (a reader must never be closed here)."""
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before ready"))
        self.closed.set_result(None)


def stream_request(server, user_id: str, token: str) -> bytes:
    """The GET of ``user_id``'s stream."""
    path = f"/api/v1/users/{urllib.parse.quote(user_id, safe='')}/notifications/stream"
    return (
        f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
        f"Accept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode("ascii")


def rss_kb() -> int:
    """This process's resident memory (server and clients together), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def kernel_unsent(sock: socket.socket) -> int:
    """Bytes in the kernel's send queue of ``sock`` not yet acknowledged (``SIOCOUTQ``)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def unsent_per_stream(server) -> list[tuple[int, int]]:
    """``(queued in the server, queued in the kernel)`` bytes of every open stream (white-box)."""
    sizes = []
    for device in server.manager.all_devices():
        writer = device.writer
        sock = getattr(writer, "_sock", None)
        if sock is not None:
            sizes.append((writer.pending, kernel_unsent(sock)))
    return sizes


@pytest.fixture
def descriptors() -> None:
    """Enough file descriptors for both ends of every stream, restored after."""
    needed = 2 * (READERS + NON_READERS) + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < needed:
        message = f"needs {needed} file descriptors; the hard limit is {hard}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def open_readers(server, tokens: dict[str, str], tally: Tally) -> list[Reader]:
    """Open every reader, :data:`CONNECT_CONCURRENCY` at a time, each up to its ``ready``."""
    loop = asyncio.get_running_loop()
    plan = [user for user in tokens for _ in range(READERS_PER_USER)]
    readers: list[Reader] = []
    for start in range(0, len(plan), CONNECT_CONCURRENCY):
        batch = []
        for user in plan[start : start + CONNECT_CONCURRENCY]:
            request = stream_request(server, user, tokens[user])
            _, reader = await loop.create_connection(lambda request=request: Reader(request, tally), server.host, server.port)
            batch.append(reader)
        await asyncio.wait_for(asyncio.gather(*(reader.ready for reader in batch)), 30)
        readers.extend(batch)
    return readers


async def open_non_readers(server, tokens: dict[str, str]) -> list[socket.socket]:
    """Open every non-reader: a raw socket with a small receive buffer that is never read."""
    loop = asyncio.get_running_loop()

    async def open_one(user: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connecting, so the advertised window is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (server.host, server.port))
        await loop.sock_sendall(sock, stream_request(server, user, tokens[user]))
        return sock

    plan = [user for user in tokens for _ in range(NON_READERS_PER_USER)]
    return list(await asyncio.gather(*(open_one(user) for user in plan)))


async def test_two_hundred_non_readers_are_dropped_while_two_thousand_readers_get_every_event(make_server, descriptors):
    server = await make_server(max_buffer_kb=MAX_BUFFER_KB, max_devices_per_user=READERS_PER_USER + NON_READERS_PER_USER, keepalive_interval=3600)
    users = [f"scale_{index:02d}" for index in range(USERS)]
    tokens = {user: server.token(user) for user in users}
    tally = Tally()
    readers: list[Reader] = []
    non_readers: list[socket.socket] = []
    try:
        readers = await open_readers(server, tokens, tally)
        non_readers = await open_non_readers(server, tokens)
        # They never read, so the server's own count is the only sign they are in.
        await wait_until(lambda: server.manager.get_stats()["totalDevices"] == READERS + NON_READERS, timeout=20)

        bound = MAX_BUFFER_KB * 1024
        # What the kernel may hold for one stream: SO_SNDBUF as set, which
        # Linux doubles (a payload byte costs more than a byte of it, so
        # this is an upper bound on the bytes).
        kernel_bound = 2 * max(bound, 16 * 1024)
        peak_queued = peak_kernel = peak_total = 0
        rss_before = rss_kb()
        rounds = 0
        while server.manager.connections_dropped < NON_READERS:
            assert rounds < MAX_ROUNDS, f"only {server.manager.connections_dropped} non-readers dropped after {rounds} rounds"
            rounds += 1
            body = {"event": EVENT, "userIds": users, "data": {"round": rounds, "blob": BLOB}}
            status, _, answer, raw = await server.request("POST", "/api/v1/events", body, as_user="scale_publisher", role="publisher")
            assert (status, answer) == (202, {"published": USERS}), raw
            # Right after the fan-out, before anyone had a chance to read.
            sizes = unsent_per_stream(server)
            peak_queued = max(peak_queued, max(queued for queued, _ in sizes))
            peak_kernel = max(peak_kernel, max(kernel for _, kernel in sizes))
            peak_total = max(peak_total, sum(queued + kernel for queued, kernel in sizes))
            await tally.wait_count(READERS * rounds, timeout=20)

        assert rounds >= 3, "the non-readers were dropped before their buffers could fill: the test proves nothing"
        assert server.manager.connections_dropped == NON_READERS
        for index, reader in enumerate(readers):
            assert reader.events == [(cursor, cursor) for cursor in range(1, rounds + 1)], f"reader {index}"
            assert reader.others == [], f"reader {index}"
            assert not reader.closed.done(), f"reader {index} was closed"
        await wait_until(lambda: server.manager.get_stats()["totalDevices"] == READERS)
        status, _, stats, _ = await server.request("GET", "/api/v1/stats")
        assert status == 200
        assert (stats["connectionsDropped"], stats["totalDevices"], stats["activeUsers"]) == (NON_READERS, READERS, USERS)

        # Memory: no stream ever held more than its bounds, and all of the
        # streams together (non-readers at their fullest) held at most what
        # the 200 non-readers' bounds allow plus what the readers had not
        # read yet in one round.
        assert peak_queued <= bound, peak_queued
        assert peak_kernel <= kernel_bound, peak_kernel
        one_round_to_readers = READERS * (len(BLOB) + 200)
        assert peak_total <= NON_READERS * (bound + kernel_bound) + one_round_to_readers, peak_total
        # Once the non-readers are gone and the readers have read, nothing is held.
        await wait_until(lambda: sum(queued for queued, _ in unsent_per_stream(server)) == 0)
        # And resident memory barely moved: all rounds' frames are about
        # 1 MiB (13 rounds x 20 users x 4 KiB), and what is queued for the
        # streams are views of those frames, not copies.  Were the queued
        # bytes copied per stream, 2,200 streams could hold 35 MiB.
        # (Measured: 2-3 MiB of growth.)
        assert rss_kb() - rss_before < 16 * 1024, (rss_before, rss_kb())
    finally:
        for sock in non_readers:
            sock.close()
        for reader in readers:
            if reader.transport is not None:
                reader.transport.close()
