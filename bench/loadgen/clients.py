"""Connections to the server: SSE streams (:class:`SSEStream`), keep-alive API
connections (:class:`Client`), and what the scenarios send through them
(tokens, notification bodies, events to batches of users).
"""

import asyncio
import collections
import json
import os
import socket
import time

import jwt

from .sse import SSEParser

STREAM_PATH = "/api/v1/users/%s/notifications/stream"
NOTIFY_PATH = "/api/v1/users/%s/notifications"
EVENTS_PATH = "/api/v1/events"
# Event names the scenarios publish (valid under the contract's pattern).
BCAST_EVENT = b"bench.bcast"
MARK_EVENT = b"bench.mark"
REPLAY_EVENT = b"bench.replay"


class HTTPStatusError(Exception):
    """The server answered a stream request with a status other than 200.

    :param int status: the HTTP status code.
    """

    def __init__(self, status):
        super().__init__("HTTP %d" % status)
        self.status = status


def failure_reason(exc):
    """A short label for a failed connect or request, to count failures by kind.

    :param BaseException exc: what the attempt raised.
    :rtype: str
    """
    if isinstance(exc, HTTPStatusError):
        return "http_%d" % exc.status
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return type(exc).__name__ + (": %s" % exc if str(exc) else "")


def mint_token(secret, sub, role, ttl):
    """Mint an HS256 JWT the server accepts with ``--jwt-secret``.

    :param str secret: the shared secret.
    :param str sub: the user id.
    :param str role: ``user``, ``publisher`` or ``admin``.
    :param int ttl: seconds until ``exp``.
    :rtype: str
    """
    return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + ttl},
                      secret, algorithm="HS256")


def notification_body():
    """A notification whose ``data.t`` is the send time; :returns: JSON ``bytes``.

    Called right before the request is written, so the stamp is as late as possible.
    """
    return json.dumps({"type": "info", "message": "bench",
                       "data": {"t": time.monotonic_ns()}}).encode()


class SSEStream(asyncio.Protocol):
    """One SSE client connection.

    :param bytes request: the complete GET request to send.
    :param ~bench.loadgen.stats.Stats stats: where receipts are counted.
    :param int user_idx: index of the user this stream belongs to.
    :param int last_id: the cursor this stream starts after (its
        ``Last-Event-ID``), for the duplicate/reorder check.
    :param int expect_replay: how many ``bench.replay`` events make this
        stream caught up (0: not counting).
    :ivar asyncio.Future ready: resolves on ``event: ready``; fails on a
        non-200 status or a close before it.
    :ivar mark_cursor: cursor of the ``bench.mark`` event, once received.
    :ivar list replayed: ``(seq, cursor, receipt ns)`` of each ``bench.replay``.
    :ivar caught_up_ns: receipt time of the one that did.
    """

    def __init__(self, request, stats, user_idx, last_id=-1, expect_replay=0):
        self._request = request
        self._stats = stats
        self._parser = SSEParser(self)
        self._last_id = last_id
        self._closing = False
        self.user_idx = user_idx
        self.transport = None
        self.mark_cursor = None
        self.replayed = []
        self.expect_replay = expect_replay
        self.caught_up_ns = None
        self.resets = 0
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        """Send the request as soon as the transport exists."""
        self.transport = transport
        self._stats.open += 1
        transport.write(self._request)

    def data_received(self, data):
        """Feed the parser, stamping the receipt time once per read."""
        self._parser.feed(data, time.monotonic_ns())

    def connection_lost(self, exc):
        """Fail ``ready`` if still pending; count a close we did not ask for."""
        self._stats.open -= 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before ready"))
        elif not self._closing:
            self._stats.closed_early += 1

    def close(self):
        """Close the connection on purpose (not counted as an early close)."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def on_status(self, status):
        """Parser callback: a non-200 status fails the stream."""
        if status != 200:
            if not self.ready.done():
                self.ready.set_exception(HTTPStatusError(status))
            self.close()

    def on_event(self, name, event_id, data, now_ns):
        """Parser callback: dispatch on the event name (see :class:`~bench.loadgen.stats.Stats`)."""
        stats = self._stats
        cursor = None
        if event_id is not None:
            try:
                cursor = int(event_id)
            except ValueError:
                cursor = None
            if cursor is not None:
                if cursor <= self._last_id:
                    stats.id_regressions += 1
                self._last_id = cursor
        if name is None or name == b"message":
            try:
                latency_ms = (now_ns - json.loads(data)["data"]["t"]) / 1e6
            except (ValueError, KeyError, TypeError):
                stats.bad_payloads += 1
                return
            stats.deliveries += 1
            if stats.recording:
                stats.latencies_ms.append(latency_ms)
        elif name == BCAST_EVENT:
            try:
                latency_ms = (now_ns - json.loads(data)["t"]) / 1e6
            except (ValueError, KeyError, TypeError):
                stats.bad_payloads += 1
                return
            stats.bcast_deliveries += 1
            stats.bcast_last_ns = now_ns
            if stats.recording:
                stats.bcast_latencies_ms.append(latency_ms)
        elif name == MARK_EVENT:
            if self.mark_cursor is None:
                stats.marked += 1
            self.mark_cursor = cursor
        elif name == REPLAY_EVENT:
            try:
                seq = json.loads(data)["seq"]
            except (ValueError, KeyError, TypeError):
                stats.bad_payloads += 1
                return
            self.replayed.append((seq, cursor, now_ns))
            if len(self.replayed) == self.expect_replay:
                self.caught_up_ns = now_ns
                stats.caught_up += 1
        elif name == b"ready":
            if not self.ready.done():
                self.ready.set_result(None)
        else:
            if name == b"reset":
                self.resets += 1
            stats.events[name.decode("utf-8", "replace")] += 1

    def on_comment(self, line):
        """Parser callback: count keep-alive pings."""
        if line.startswith(b": ping"):
            self._stats.pings += 1

    def on_end(self):
        """Parser callback: the server ended the stream with the chunked terminator."""
        if self.transport is not None:
            self.transport.close()


class Client:
    """One keep-alive HTTP/1.1 connection for API requests.

    It reconnects on the next use after any error or ``Connection: close``.

    :param tuple target: ``(host, port)``.
    :param str token: the JWT sent as ``Authorization: Bearer``.
    :param float timeout: seconds allowed for one request.
    """

    def __init__(self, target, token, timeout):
        self._target = target
        self._timeout = timeout
        self._prefix = ("Host: %s:%d\r\nAuthorization: Bearer %s\r\n"
                        "Content-Type: application/json\r\n" % (target[0], target[1], token)).encode()
        self._reader = None
        self._writer = None

    async def connect(self):
        """Open the connection if it is not open (bounded by the timeout)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(*self._target), self._timeout)
            self._writer.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self):
        """Close the connection; the next request reconnects."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def post(self, path, make_body):
        """Send one POST and read the whole response.

        :param str path: request path.
        :param make_body: called right before the write, so a time stamp in
            the body is taken as late as possible; returns ``bytes``.
        :returns: the response status.
        :rtype: int
        """
        status, _ = await self.request("POST", path, make_body)
        return status

    async def get_body(self, path):
        """``GET path``: :returns: ``(status, body bytes)``."""
        return await self.request("GET", path, None)

    async def request(self, method, path, make_body):
        """Send one request; :returns: ``(status, body bytes)``."""
        try:
            return await asyncio.wait_for(self._request(method, path, make_body), self._timeout)
        except BaseException:
            self.close()
            raise

    async def _request(self, method, path, make_body):
        await self.connect()
        body = make_body() if make_body is not None else b""
        self._writer.write(b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                           % (method.encode(), path.encode(), self._prefix, len(body), body))
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        status = int(lines[0].split(None, 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                parts.append((await self._reader.readexactly(size + 2))[:-2])
                if size == 0:
                    break
            payload = b"".join(parts)
        else:
            payload = await self._reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection") == b"close":
            self.close()
        return status, payload


async def publish_event(clients, batches, name, make_data):
    """POST one event to every batch of users at once, one connection each.

    :param list clients: one :class:`Client` per batch.
    :param list batches: JSON arrays of user ids (``bytes``), one per request.
    :param bytes name: the event name.
    :param make_data: called right before each write; returns the
        ``data`` object's JSON bytes (so a time stamp is as late as possible).
    :returns: ``Counter`` of statuses (and error reasons).
    """
    outcome = collections.Counter()

    async def send(client, ids):
        def body():
            return b'{"event":"%s","userIds":%s,"data":%s}' % (name, ids, make_data())
        try:
            outcome[await client.post(EVENTS_PATH, body)] += 1
        except Exception as exc:  # counted, and the run goes on
            outcome[failure_reason(exc)] += 1

    await asyncio.gather(*(send(c, ids) for c, ids in zip(clients, batches, strict=True)))
    return outcome


async def server_stats(client):
    """:returns: the server's ``GET /api/v1/stats`` through ``client`` as a dict, or ``None``."""
    try:
        status, body = await client.get_body("/api/v1/stats")
        return json.loads(body) if status == 200 else None
    except Exception:  # optional; the floor may answer 404
        return None
