#!/usr/bin/env python3
"""Raw-socket load generator for the SSE notification server.

One asyncio process (uvloop when installed), no HTTP client library: every
stream is an :class:`asyncio.Protocol` with an incremental chunked + SSE
parser, and requests go over keep-alive HTTP/1.1 connections.  Every
published item carries ``time.monotonic_ns()`` taken right before its
request is written, so latency is receipt minus that stamp, end to end.

Scenarios (one or more, run in the order given on the same streams):

``conns``
    Open ``--streams`` SSE streams (``--devices-per-user`` per user
    ``bench_u{i}``) from many source addresses, with bounded connect
    concurrency; wait for every ``event: ready``; report connect time,
    failures, the server's RSS and CPU per stream (``--server-pid``);
    optionally hold them ``--hold`` seconds (to count ``: ping`` comments).
    Every other stream scenario starts with this phase.
``peruser``
    ``--rate`` notifications per second for ``--duration`` seconds through
    ``POST /api/v1/users/{u}/notifications``, open loop, each to a random
    user with streams: latency distribution, deliveries expected vs
    received, server CPU per publish.
``broadcast``
    ``--bcast-rounds`` rounds (after ``--bcast-warmup`` unmeasured ones) of
    one event to every user with streams, through ``POST /api/v1/events``
    (the contract takes at most 1,000 ``userIds`` per request, so a round
    is ``ceil(users / --event-batch)`` requests sent at once on as many
    connections): deliveries/s, server CPU per delivery and latency, per
    round and overall.
``create``
    No streams needed: ``--create-concurrency`` keep-alive connections
    (a comma list: one step each) POST notifications back to back
    (closed loop) for ``--create-warmup`` + ``--duration`` seconds; the
    figure is 201 answers per second over the window, with request latency
    and the server's IOLoop lag over the same window (from the
    ``notify_loop_lag_seconds`` histogram of ``/metrics``, two scrapes
    diffed; the max from ``loopLagMs`` in ``/api/v1/stats``, polled each
    second).  The step with the highest rate is the result.
``replay-storm``
    Mark every stream's cursor with one event, close every stream, publish
    ``--replay-behind`` events to every user while they are away, then
    reconnect them all at once (``--storm-concurrency``) with
    ``Last-Event-ID`` = the mark: time until every client has all missed
    events, and a check of each client's sequence (no gap, no duplicate,
    in order, no ``reset``).

Only loopback targets are meant (``127.0.0.0/8``); every phase is bounded by a
duration or a timeout and every socket is closed at the end.

Example::

    .venv/bin/python bench/loadgen.py peruser broadcast --streams 3000 \\
        --rate 1000 --duration 10 --jwt-secret S --server-pid 1234 --json out.json
"""

import argparse
import array
import asyncio
import collections
import gc
import json
import math
import os
import random
import re
import resource
import socket
import statistics
import sys
import time

import jwt

# Linux value; Python exposes the constant only on recent builds.  With it the
# kernel picks the source port at connect() time against the full 4-tuple, so
# binding to an address does not reserve a port per socket up front.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_STREAM_PATH = "/api/v1/users/%s/notifications/stream"
_NOTIFY_PATH = "/api/v1/users/%s/notifications"
_EVENTS_PATH = "/api/v1/events"
# Above this the single loadgen thread, not the server, may be what limits
# the figures.
_CLIENT_BOUND_PCT = 80.0
# Event names the scenarios publish (valid under the contract's pattern).
_BCAST = b"bench.bcast"
_MARK = b"bench.mark"
_REPLAY = b"bench.replay"
SCENARIOS = ("conns", "peruser", "broadcast", "create", "replay-storm")
_STREAM_SCENARIOS = ("conns", "peruser", "broadcast", "replay-storm")
_LAG_BUCKET = re.compile(rb'^notify_loop_lag_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\}\s+(\S+)', re.M)

# Parser states.
_HEAD, _SIZE, _DATA, _CRLF, _IDENTITY, _DONE = range(6)


class HTTPStatusError(Exception):
    """The server answered a stream request with a status other than 200.

    :param int status: the HTTP status code.
    """

    def __init__(self, status):
        super().__init__("HTTP %d" % status)
        self.status = status


class SSEParser:
    """Incremental parser for an HTTP/1.1 response carrying an SSE body.

    Handles the status line and headers, chunked transfer encoding (or a
    close-delimited body) and SSE frames with LF line endings.  Chunk
    boundaries need not line up with frames.  Results go to ``sink``:

    * ``sink.on_status(status)`` once the head is parsed;
    * ``sink.on_event(name, event_id, data, now_ns)`` for each dispatched
      frame (``name`` and ``event_id`` are ``bytes`` or ``None``, ``data`` the
      ``data:`` lines joined by LF);
    * ``sink.on_comment(line)`` for each ``:`` line;
    * ``sink.on_end()`` on the terminating zero-length chunk.

    :param sink: object with the callbacks above.
    """

    __slots__ = ("_sink", "_buf", "_state", "_left", "_lines", "_name", "_id",
                 "_data", "_now")

    def __init__(self, sink):
        self._sink = sink
        self._buf = bytearray()
        self._state = _HEAD
        self._left = 0
        self._lines = bytearray()
        self._name = None
        self._id = None
        self._data = None
        self._now = 0

    def feed(self, data, now_ns):
        """Consume bytes received at ``now_ns`` and emit whatever completes.

        :param bytes data: bytes as read from the socket.
        :param int now_ns: ``time.monotonic_ns()`` at receipt, passed on to
            ``on_event``.
        """
        self._now = now_ns
        if self._state == _IDENTITY:
            self._body(data)
            return
        if self._state == _DONE:
            return
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        state = self._state
        while pos < end:
            if state == _DATA:
                take = min(end - pos, self._left)
                self._body(buf[pos:pos + take])
                pos += take
                self._left -= take
                if self._left:
                    break
                state = _CRLF
            elif state == _SIZE:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    state = _DONE
                    self._sink.on_end()
                    break
                self._left = size
                state = _DATA
            elif state == _CRLF:
                if end - pos < 2:
                    break
                pos += 2
                state = _SIZE
            else:
                state, pos = self._head(buf, pos)
                if state is None:
                    state = _HEAD
                    break
                if state == _IDENTITY:
                    self._body(buf[pos:])
                    pos = end
                elif state == _DONE:
                    break
        self._state = state
        del buf[:pos]

    def _head(self, buf, pos):
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return None, pos
        lines = bytes(buf[pos:end]).split(b"\r\n")
        status = int(lines[0].split(None, 2)[1])
        chunked = any(line.lower().startswith(b"transfer-encoding:")
                      and b"chunked" in line.lower() for line in lines[1:])
        self._sink.on_status(status)
        if status != 200:
            return _DONE, end + 4
        return (_SIZE if chunked else _IDENTITY), end + 4

    def _body(self, data):
        lines = self._lines
        lines += data
        start = 0
        while True:
            nl = lines.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(lines[start:nl])
            start = nl + 1
            if not line:
                if self._data is not None or self._name is not None or self._id is not None:
                    data_bytes = b"\n".join(self._data) if self._data is not None else b""
                    self._sink.on_event(self._name, self._id, data_bytes, self._now)
                    self._name = self._id = self._data = None
            elif line[0] == 0x3A:  # ":" starts a comment
                self._sink.on_comment(line)
            else:
                field, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if field == b"data":
                    if self._data is None:
                        self._data = [value]
                    else:
                        self._data.append(value)
                elif field == b"id":
                    self._id = value
                elif field == b"event":
                    self._name = value
        del lines[:start]


class Stats:
    """Counters shared by every stream of one run.

    :ivar int deliveries: notification frames received with a readable ``data.t``.
    :ivar array.array latencies_ms: notification receipt minus send time,
        while ``recording``.
    :ivar int bcast_deliveries: ``bench.bcast`` events received.
    :ivar array.array bcast_latencies_ms: their receipt minus send time,
        while ``recording``.
    :ivar int bcast_last_ns: receipt time of the latest ``bench.bcast``.
    :ivar int marked: streams that received their ``bench.mark``.
    :ivar int caught_up: streams that received every expected ``bench.replay``.
    :ivar int pings: ``: ping`` comments received.
    :ivar collections.Counter events: other named events, by name.
    :ivar int id_regressions: frames whose ``id:`` was not above the previous
        one on the same stream (duplicates or reordering).
    :ivar int bad_payloads: frames of the benchmark without the expected data.
    :ivar int open: streams currently connected.
    :ivar int closed_early: streams that ended before the load generator closed them.
    """

    def __init__(self):
        self.deliveries = 0
        self.latencies_ms = array.array("d")
        self.bcast_deliveries = 0
        self.bcast_latencies_ms = array.array("d")
        self.bcast_last_ns = 0
        self.marked = 0
        self.caught_up = 0
        self.recording = False
        self.pings = 0
        self.events = collections.Counter()
        self.id_regressions = 0
        self.bad_payloads = 0
        self.open = 0
        self.closed_early = 0


class SSEStream(asyncio.Protocol):
    """One SSE client connection.

    :param bytes request: the complete GET request to send.
    :param Stats stats: where receipts are counted.
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
        """Parser callback: dispatch on the event name (see :class:`Stats`)."""
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
        elif name == _BCAST:
            try:
                latency_ms = (now_ns - json.loads(data)["t"]) / 1e6
            except (ValueError, KeyError, TypeError):
                stats.bad_payloads += 1
                return
            stats.bcast_deliveries += 1
            stats.bcast_last_ns = now_ns
            if stats.recording:
                stats.bcast_latencies_ms.append(latency_ms)
        elif name == _MARK:
            if self.mark_cursor is None:
                stats.marked += 1
            self.mark_cursor = cursor
        elif name == _REPLAY:
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


class ServerProbe:
    """Reads a server process's RSS and CPU time from ``/proc``.

    :param pid: the server's pid, or ``None`` to report nothing.
    """

    def __init__(self, pid):
        self.pid = pid
        self._schedstat = os.path.exists("/proc/self/schedstat")

    def rss_kb(self):
        """:returns: VmRSS in KB, or ``None`` without a readable pid."""
        if self.pid is None:
            return None
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def cpu_s(self):
        """:returns: CPU seconds used by the process, or ``None`` without a readable pid.

        The sum of every thread's ``schedstat`` run time (nanoseconds) when
        the kernel has it, else ``utime + stime`` from ``stat`` (whole ticks,
        10 ms, too coarse for one broadcast round of a few thousand
        deliveries).  Threads of the server live as long as it does; one
        that ended inside a window would be missed by the first method.
        """
        if self.pid is None:
            return None
        if self._schedstat:
            try:
                tasks = os.listdir("/proc/%d/task" % self.pid)
            except OSError:
                return None
            total = 0
            for task in tasks:
                try:
                    with open("/proc/%d/task/%s/schedstat" % (self.pid, task)) as f:
                        total += int(f.read().split()[0])
                except OSError:
                    pass  # the thread ended between the listing and the read
            return total / 1e9
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                stat = f.read()
        except OSError:
            return None
        # The command name may contain spaces; the fields after it do not.
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _own_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _diff(after, before):
    return after - before if after is not None and before is not None else None


def _per(amount, count, scale=1e6):
    return amount * scale / count if amount is not None and count else None


def percentiles(values):
    """Summarise a sample with nearest-rank percentiles.

    :param values: iterable of floats.
    :returns: ``{"count", "p50", "p90", "p99", "max"}``; the figures are
        ``None`` for an empty sample.
    :rtype: dict
    """
    ordered = sorted(values)
    n = len(ordered)
    out = {"count": n}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        out[name] = ordered[max(0, math.ceil(q * n) - 1)] if n else None
    out["max"] = ordered[-1] if n else None
    return out


def lag_buckets(metrics_text):
    """Read the cumulative ``notify_loop_lag_seconds`` histogram from ``/metrics``.

    :param bytes metrics_text: the Prometheus exposition.
    :returns: ``[(upper bound s, cumulative count), ...]`` sorted, or ``None``
        when the server exposes no such histogram.
    """
    pairs = [(math.inf if le == b"+Inf" else float(le), float(count))
             for le, count in _LAG_BUCKET.findall(metrics_text)]
    return sorted(pairs) or None


def lag_window(before, after):
    """Percentiles of the loop lag between two scrapes of the histogram.

    :param before: :func:`lag_buckets` at the window's start.
    :param after: :func:`lag_buckets` at its end.
    :returns: ``{"samples", "p50_ms", "p99_ms", "p50_le_ms", "p99_le_ms",
        "max_le_ms"}``:
        ``p*_ms`` interpolated linearly inside the bucket (as Prometheus's
        ``histogram_quantile`` does), ``p*_le_ms`` the bucket's upper bound
        (``p99_le_ms <= 10`` proves ``p99 <= 10 ms``; ``None`` above the
        last bound); the whole result is ``None`` without data.
    """
    if not before or not after or len(before) != len(after):
        return None
    counts = [(bound, a - b) for (bound, a), (_, b) in zip(after, before)]
    total = counts[-1][1]
    out = {"samples": int(total), "max_le_ms": None}
    below = 0.0
    for bound, cumulative in counts:
        if cumulative > below:
            # The bucket of the largest sample in the window.
            out["max_le_ms"] = None if math.isinf(bound) else bound * 1e3
        below = cumulative
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        if not total:
            out[name + "_ms"] = out[name + "_le_ms"] = None
            continue
        rank = q * total
        lower, below = 0.0, 0.0
        for bound, cumulative in counts:
            if cumulative >= rank:
                if math.isinf(bound):
                    value = lower  # beyond the last bound: report that bound
                else:
                    inside = cumulative - below
                    value = lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
                out[name + "_ms"] = value * 1e3
                # None: beyond the last finite bucket (JSON has no infinity).
                out[name + "_le_ms"] = None if math.isinf(bound) else bound * 1e3
                break
            lower, below = bound, cumulative
    return out


def _reason(exc):
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


def _notification_body():
    return json.dumps({"type": "info", "message": "bench",
                       "data": {"t": time.monotonic_ns()}}).encode()


class LoadGen:
    """Drives one run: opens the streams, runs the scenarios, closes everything.

    :param argparse.Namespace args: parsed command line.
    """

    def __init__(self, args):
        self.args = args
        self.target = (args.host, args.port)
        self.stats = Stats()
        self.streams = []
        self.probe = ServerProbe(args.server_pid)
        self.result = {"config": {k: v for k, v in vars(args).items() if k != "jwt_secret"}}
        self._publisher_token = mint_token(args.jwt_secret, "bench_publisher", "publisher", args.jwt_ttl)
        self._admin_token = mint_token(args.jwt_secret, "bench_admin", "admin", args.jwt_ttl)
        self._sources = ["127.0.0.%d" % (2 + i) for i in range(args.source_ips)]

    def _user(self, idx):
        return "bench_u%d" % idx

    def _client(self, port=None, token=None):
        return Client((self.args.host, port or self.args.port), token or self._publisher_token,
                      self.args.request_timeout)

    def _stream_request(self, user_idx, last_event_id=None):
        args = self.args
        token = mint_token(args.jwt_secret, self._user(user_idx), "user", args.jwt_ttl)
        extra = "Last-Event-ID: %d\r\n" % last_event_id if last_event_id is not None else ""
        return ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n%s\r\n"
                % (_STREAM_PATH % self._user(user_idx), args.host, args.port, token, extra)).encode()

    def _devices(self):
        """:returns: ``Counter`` user index -> open streams of that user."""
        return collections.Counter(s.user_idx for s in self.streams)

    async def _connect_many(self, specs, concurrency, phase_timeout, expect_replay=0):
        """Open one stream per spec, ``concurrency`` at a time, each until ``ready``.

        :param list specs: ``(request bytes, user index, last id)`` per stream.
        :param int expect_replay: see :class:`SSEStream`.
        :returns: ``(streams, connect ms array, failures Counter, wall s)``;
            ``streams`` holds only those that got ready, in spec order.
        """
        args = self.args
        loop = asyncio.get_running_loop()
        sources = self._sources
        connect_ms = array.array("d")
        failures = collections.Counter()
        opened = [None] * len(specs)
        indices = iter(range(len(specs)))
        deadline = loop.time() + phase_timeout

        async def open_one(idx):
            request, user_idx, last_id = specs[idx]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((sources[idx % len(sources)], 0))
                await loop.sock_connect(sock, self.target)
            except BaseException:
                sock.close()
                raise
            _, proto = await loop.create_connection(
                lambda: SSEStream(request, self.stats, user_idx, last_id, expect_replay), sock=sock)
            try:
                await proto.ready
            except BaseException:
                proto.close()
                raise
            return proto

        async def worker():
            for idx in indices:
                if loop.time() > deadline:
                    failures["connect phase timeout"] += 1
                    continue
                started = time.perf_counter()
                try:
                    # asyncio.timeout, unlike wait_for, adds no task per stream.
                    async with asyncio.timeout(args.connect_timeout):
                        opened[idx] = await open_one(idx)
                except Exception as exc:  # every failure is a figure, not a crash
                    failures[_reason(exc)] += 1
                    continue
                connect_ms.append((time.perf_counter() - started) * 1e3)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
        wall = time.perf_counter() - started
        return [s for s in opened if s is not None], connect_ms, failures, wall

    async def open_streams(self):
        """Open ``--streams`` streams with bounded concurrency and measure the server.

        :returns: the ``conns`` figures.
        :rtype: dict
        """
        args = self.args
        n = args.streams
        n_users = math.ceil(n / args.devices_per_user)
        requests = [self._stream_request(u) for u in range(n_users)]
        specs = [(requests[i // args.devices_per_user], i // args.devices_per_user, -1) for i in range(n)]
        rss_before = self.probe.rss_kb()
        cpu_before = self.probe.cpu_s()
        own_before = _own_cpu_s()
        self.streams, connect_ms, failures, wall = await self._connect_many(
            specs, args.connect_concurrency, args.connect_phase_timeout)
        cpu_after = self.probe.cpu_s()
        own_cpu = _own_cpu_s() - own_before
        # Let the server finish whatever the last connects left behind before
        # RSS is read.
        await asyncio.sleep(args.settle)
        rss_after = self.probe.rss_kb()
        # Every stream's objects live until the end; frozen, they are out of
        # reach of the client's full collections, whose pauses would
        # otherwise show up as server latency.
        gc.collect()
        gc.freeze()
        ready = len(self.streams)
        out = {
            "streams_requested": n,
            "users": n_users,
            "streams_ready": ready,
            "failures": dict(failures),
            "open_wall_s": wall,
            "streams_per_s": ready / wall if wall else None,
            "connect_ready_ms": percentiles(connect_ms),
            "server_rss_before_kb": rss_before,
            "server_rss_after_kb": rss_after,
            "server_rss_per_stream_kb": _per(_diff(rss_after, rss_before), n, 1),
            "server_cpu_s": _diff(cpu_after, cpu_before),
            "server_cpu_us_per_stream": _per(_diff(cpu_after, cpu_before), ready),
            "loadgen_cpu_pct": own_cpu * 100 / wall if wall else None,
        }
        self.result["conns"] = out
        return out

    async def hold(self):
        """Keep the streams open ``--hold`` seconds (``conns`` only)."""
        if self.args.hold > 0:
            pings_before = self.stats.pings
            await asyncio.sleep(self.args.hold)
            self.result["conns"]["hold_s"] = self.args.hold
            self.result["conns"]["pings_during_hold"] = self.stats.pings - pings_before

    async def _wait_for(self, condition, timeout, step=0.005):
        """Poll ``condition()`` until it holds or ``timeout`` s pass; :returns: whether it held."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(step)
        return True

    # -- peruser -----------------------------------------------------------

    async def peruser(self):
        """Publish open-loop at ``--rate`` for ``--duration`` s to random users.

        :returns: the ``peruser`` figures.
        :rtype: dict
        """
        args = self.args
        stats = self.stats
        rng = random.Random(args.seed)
        devices = self._devices()
        users = sorted(devices)
        pool = [self._client(args.publish_port) for _ in range(args.publishers)]
        await asyncio.gather(*(p.connect() for p in pool))
        idle = asyncio.Queue()
        for p in pool:
            idle.put_nowait(p)
        statuses = collections.Counter()
        errors = collections.Counter()
        expected = 0
        total = round(args.rate * args.duration)

        async def publish(pub, user_idx):
            nonlocal expected
            try:
                status = await pub.post(_NOTIFY_PATH % self._user(user_idx), _notification_body)
            except Exception as exc:  # counted, and the run goes on
                errors[_reason(exc)] += 1
            else:
                statuses[status] += 1
                if status == 201:
                    expected += devices[user_idx]
            finally:
                idle.put_nowait(pub)

        received_before = stats.deliveries
        regressions_before = stats.id_regressions
        del stats.latencies_ms[:]
        cpu_before = self.probe.cpu_s()
        own_before = _own_cpu_s()
        stats.recording = True
        # time.monotonic, not loop.time: uvloop's clock ticks in whole
        # milliseconds, too coarse for a schedule 0.5 ms apart at 2000/s.
        clock = time.monotonic
        started = clock()
        tasks = []
        late = 0
        max_lag = 0.0
        for i in range(total if users else 0):
            delay = started + i / args.rate - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if idle.empty():
                # Open loop wants the send now; every connection is busy, so it
                # goes out late.  Counted so a saturated pool is visible.
                late += 1
            pub = await idle.get()
            max_lag = max(max_lag, clock() - (started + i / args.rate))
            tasks.append(asyncio.create_task(publish(pub, rng.choice(users))))
        send_wall = clock() - started
        await asyncio.gather(*tasks)
        await self._wait_for(lambda: stats.deliveries - received_before >= expected, args.drain, 0.01)
        stats.recording = False
        wall = clock() - started
        cpu_after = self.probe.cpu_s()
        own_cpu = _own_cpu_s() - own_before
        for p in pool:
            p.close()
        created = statuses.get(201, 0)
        received = stats.deliveries - received_before
        server_cpu = _diff(cpu_after, cpu_before)
        out = {
            "streams": len(self.streams),
            "rate": args.rate,
            "duration_s": args.duration,
            "publishes_sent": len(tasks),
            "publishes_201": created,
            "non_201": {str(k): v for k, v in statuses.items() if k != 201},
            "publish_errors": dict(errors),
            "late_sends": late,
            "max_send_lag_ms": max_lag * 1e3,
            "achieved_rate": len(tasks) / send_wall if send_wall else None,
            "deliveries_expected": expected,
            "deliveries_received": received,
            "id_regressions": stats.id_regressions - regressions_before,
            "latency_ms": percentiles(stats.latencies_ms),
            "window_wall_s": wall,
            "server_cpu_s": server_cpu,
            "server_cpu_us_per_publish": _per(server_cpu, created),
            "server_cpu_us_per_delivery": _per(server_cpu, received),
            "loadgen_cpu_pct": own_cpu * 100 / wall if wall else None,
        }
        self.result["peruser"] = out
        return out

    # -- broadcast ---------------------------------------------------------

    def _batches(self, users):
        """``users`` (indices) cut into JSON arrays of at most ``--event-batch`` ids."""
        size = self.args.event_batch
        return [json.dumps([self._user(u) for u in users[i:i + size]]).encode()
                for i in range(0, len(users), size)]

    async def _publish_event(self, clients, batches, name, make_data):
        """POST one event to every batch of users at once, one connection each.

        :param make_data: called right before each write; returns the
            ``data`` object's JSON bytes (so a time stamp is as late as possible).
        :returns: ``Counter`` of statuses (and error reasons).
        """
        outcome = collections.Counter()

        async def send(client, ids):
            def body():
                return b'{"event":"%s","userIds":%s,"data":%s}' % (name, ids, make_data())
            try:
                outcome[await client.post(_EVENTS_PATH, body)] += 1
            except Exception as exc:  # counted, and the run goes on
                outcome[_reason(exc)] += 1

        await asyncio.gather(*(send(c, ids) for c, ids in zip(clients, batches)))
        return outcome

    async def broadcast(self):
        """Rounds of one ``bench.bcast`` event to every user with streams.

        :returns: the ``broadcast`` figures.
        :rtype: dict
        """
        args = self.args
        stats = self.stats
        devices = self._devices()
        batches = self._batches(sorted(devices))
        expected = sum(devices.values())
        clients = [self._client() for _ in batches]
        await asyncio.gather(*(c.connect() for c in clients))
        regressions_before = stats.id_regressions
        rounds = []
        all_latencies = array.array("d")
        own_before = _own_cpu_s()
        wall_started = time.monotonic()
        for r in range(args.bcast_warmup + args.bcast_rounds):
            await asyncio.sleep(args.bcast_pause)
            before = stats.bcast_deliveries
            del stats.bcast_latencies_ms[:]
            stats.recording = True
            cpu_before = self.probe.cpu_s()
            sent_ns = time.monotonic_ns()
            statuses = await self._publish_event(
                clients, batches, _BCAST, lambda: b'{"t":%d,"r":%d}' % (time.monotonic_ns(), r))
            complete = await self._wait_for(lambda: stats.bcast_deliveries - before >= expected,
                                            args.bcast_timeout)
            cpu_after = self.probe.cpu_s()
            stats.recording = False
            received = stats.bcast_deliveries - before
            wall_s = (stats.bcast_last_ns - sent_ns) / 1e9 if received else None
            server_cpu = _diff(cpu_after, cpu_before)
            warmup = r < args.bcast_warmup
            rounds.append({
                "round": r,
                "warmup": warmup,
                "requests": {str(k): v for k, v in statuses.items()},
                "deliveries_expected": expected,
                "deliveries_received": received,
                "complete": complete,
                "wall_ms": wall_s * 1e3 if wall_s else None,
                "deliveries_per_s": received / wall_s if wall_s else None,
                "server_cpu_s": server_cpu,
                "server_cpu_us_per_delivery": _per(server_cpu, received),
                "latency_ms": percentiles(stats.bcast_latencies_ms),
            })
            if not warmup:
                all_latencies.extend(stats.bcast_latencies_ms)
        own_cpu = _own_cpu_s() - own_before
        wall = time.monotonic() - wall_started
        for c in clients:
            c.close()
        measured = [x for x in rounds if not x["warmup"]]
        cpu_total = sum(x["server_cpu_s"] for x in measured) if all(
            x["server_cpu_s"] is not None for x in measured) else None
        delivered = sum(x["deliveries_received"] for x in measured)
        rates = [x["deliveries_per_s"] for x in measured if x["deliveries_per_s"]]
        per_delivery = [x["server_cpu_us_per_delivery"] for x in measured
                        if x["server_cpu_us_per_delivery"] is not None]
        out = {
            "streams": len(self.streams),
            "users": len(devices),
            "requests_per_round": len(batches),
            "warmup_rounds": args.bcast_warmup,
            "rounds_measured": len(measured),
            "deliveries_expected": expected * len(measured),
            "deliveries_received": delivered,
            "all_delivered": all(x["deliveries_received"] == expected for x in measured),
            "all_accepted": all(set(x["requests"]) == {"202"} for x in rounds),
            "id_regressions": stats.id_regressions - regressions_before,
            "deliveries_per_s_median": statistics.median(rates) if rates else None,
            "server_cpu_us_per_delivery": _per(cpu_total, delivered),
            "server_cpu_us_per_delivery_best_round": min(per_delivery) if per_delivery else None,
            "latency_ms": percentiles(all_latencies),
            "loadgen_cpu_pct": own_cpu * 100 / wall if wall else None,
            "rounds": rounds,
        }
        self.result["broadcast"] = out
        return out

    # -- create --------------------------------------------------------------

    async def _scrape_lag(self, client):
        """:returns: the loop-lag histogram of ``/metrics``, or ``None``."""
        try:
            status, body = await client.get_body("/metrics")
        except Exception:  # the figure is optional; the floor has none
            return None
        return lag_buckets(body) if status == 200 else None

    async def _stats(self, client):
        """:returns: ``GET /api/v1/stats`` as a dict, or ``None``."""
        try:
            status, body = await client.get_body("/api/v1/stats")
            return json.loads(body) if status == 200 else None
        except Exception:  # optional; the floor may answer 404
            return None

    async def create(self):
        """Closed-loop creates at each ``--create-concurrency``; the best step wins.

        :returns: the ``create`` figures.
        :rtype: dict
        """
        args = self.args
        steps = []
        for concurrency in args.create_concurrency:
            steps.append(await self._create_step(concurrency))
            await asyncio.sleep(args.bcast_pause)
        best = max(steps, key=lambda s: s["stored_per_s"] or 0)
        out = dict(best)
        out["steps"] = steps
        self.result["create"] = out
        return out

    async def _create_step(self, concurrency):
        args = self.args
        rng = random.Random(args.seed)
        n_users = max(args.create_users, math.ceil(len(self.streams) / args.devices_per_user))
        paths = [_NOTIFY_PATH % self._user(u) for u in range(n_users)]
        pool = [self._client() for _ in range(concurrency)]
        await asyncio.gather(*(c.connect() for c in pool))
        monitor = self._client()
        clock = time.monotonic
        started = clock()
        window_start = started + args.create_warmup
        window_end = window_start + args.duration
        per_second = collections.Counter()
        statuses = collections.Counter()
        errors = collections.Counter()
        latencies = array.array("d")
        stop = False

        async def worker(client):
            while not stop:
                t0 = clock()
                try:
                    status = await client.post(rng.choice(paths), _notification_body)
                except Exception as exc:  # counted; a short pause avoids a hot loop
                    errors[_reason(exc)] += 1
                    await asyncio.sleep(0.05)
                    continue
                t1 = clock()
                if window_start <= t1 < window_end:
                    statuses[status] += 1
                    latencies.append((t1 - t0) * 1e3)
                    if status == 201:
                        per_second[int(t1 - window_start)] += 1

        workers = [asyncio.create_task(worker(c)) for c in pool]
        await asyncio.sleep(max(0.0, window_start - clock()))
        lag_before = await self._scrape_lag(monitor)
        cpu_before = self.probe.cpu_s()
        own_before = _own_cpu_s()
        lag_max = None
        while clock() < window_end:
            await asyncio.sleep(min(1.0, max(0.0, window_end - clock())))
            polled = await self._stats(monitor)
            recent = (polled or {}).get("loopLagMs") or {}
            if recent.get("max") is not None:
                lag_max = max(lag_max or 0.0, recent["max"])
        cpu_after = self.probe.cpu_s()
        own_cpu = _own_cpu_s() - own_before
        lag_after = await self._scrape_lag(monitor)
        stop = True
        done, pending = await asyncio.wait(workers, timeout=args.request_timeout + 1)
        for task in pending:
            task.cancel()
        for c in pool + [monitor]:
            c.close()
        created = statuses.get(201, 0)
        seconds = [per_second.get(i, 0) for i in range(int(args.duration))]
        server_cpu = _diff(cpu_after, cpu_before)
        lag = lag_window(lag_before, lag_after)
        if lag is not None:
            lag["max_ms_recent"] = lag_max
        return {
            "concurrency": concurrency,
            "users": n_users,
            "window_s": args.duration,
            "warmup_s": args.create_warmup,
            "stored_201": created,
            "stored_per_s": created / args.duration,
            "per_second_min": min(seconds) if seconds else None,
            "per_second_max": max(seconds) if seconds else None,
            "non_201": {str(k): v for k, v in statuses.items() if k != 201},
            "errors": dict(errors),
            "request_ms": percentiles(latencies),
            "server_cpu_s": server_cpu,
            "server_cpu_us_per_create": _per(server_cpu, created),
            "server_cpu_pct": server_cpu * 100 / args.duration if server_cpu is not None else None,
            "loop_lag": lag,
            "loadgen_cpu_pct": own_cpu * 100 / args.duration,
        }

    # -- replay-storm --------------------------------------------------------

    async def replay_storm(self):
        """Close every stream, publish while they are away, reconnect all at once.

        :returns: the ``replay_storm`` figures.
        :rtype: dict
        """
        args = self.args
        stats = self.stats
        behind = args.replay_behind
        old = self.streams
        devices = self._devices()
        batches = self._batches(sorted(devices))
        clients = [self._client() for _ in batches]
        await asyncio.gather(*(c.connect() for c in clients))
        out = {"clients": len(old), "users": len(devices), "behind": behind}
        self.result["replay_storm"] = out

        # 1. Every stream learns its cursor, as a live browser would have one.
        marked_before = stats.marked
        statuses = await self._publish_event(clients, batches, _MARK, lambda: b"{}")
        out["mark_requests"] = {str(k): v for k, v in statuses.items()}
        if not await self._wait_for(lambda: stats.marked - marked_before >= len(old), args.bcast_timeout):
            out["error"] = "only %d of %d streams got the mark event" % (stats.marked - marked_before, len(old))
            return out

        # 2. Everyone goes away; the server must have noticed before the
        # reconnects, or the device limit could refuse some of them.
        for s in old:
            s.close()
        await self._wait_for(lambda: stats.open == 0, 10)
        monitor = self._client()

        async def server_devices():
            polled = await self._stats(monitor)
            return None if polled is None else polled.get("totalDevices")

        deadline = time.monotonic() + 10
        while (await server_devices() or 0) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

        # 3. Events published while they are away, one request per batch and
        # sequence number, in order.
        published = collections.Counter()
        for seq in range(1, behind + 1):
            published.update(await self._publish_event(clients, batches, _REPLAY,
                                                       lambda seq=seq: b'{"seq":%d}' % seq))
        out["publish_requests"] = {str(k): v for k, v in published.items()}
        for c in clients:
            c.close()

        # 4. The storm: everyone at once, each with its own cursor.
        requests = {}
        specs = []
        for s in old:
            key = (s.user_idx, s.mark_cursor)
            if key not in requests:
                requests[key] = self._stream_request(s.user_idx, s.mark_cursor)
            specs.append((requests[key], s.user_idx, s.mark_cursor))
        caught_before = stats.caught_up
        cpu_before = self.probe.cpu_s()
        own_before = _own_cpu_s()
        storm_ns = time.monotonic_ns()
        streams, connect_ms, failures, connect_wall = await self._connect_many(
            specs, args.storm_concurrency or len(specs), args.storm_timeout, expect_replay=behind)
        self.streams = streams
        await self._wait_for(lambda: stats.caught_up - caught_before >= len(streams),
                             max(0.0, args.storm_timeout - (time.monotonic_ns() - storm_ns) / 1e9), 0.01)
        all_in_ns = time.monotonic_ns()
        cpu_after = self.probe.cpu_s()
        # Anything more (a duplicate) would arrive right behind the last event.
        await asyncio.sleep(args.storm_settle)
        own_cpu = _own_cpu_s() - own_before

        # 5. Check every client's sequence.
        gaps = dups = disorder = noncontiguous = resets = 0
        catch_up_s = array.array("d")
        for s in streams:
            seqs = [seq for seq, _, _ in s.replayed]
            cursors = [c for _, c, _ in s.replayed]
            if set(range(1, behind + 1)) - set(seqs):
                gaps += 1
            if len(seqs) != len(set(seqs)) or len(cursors) != len(set(cursors)):
                dups += 1
            if seqs != sorted(seqs) or cursors != sorted(cursors):
                disorder += 1
            if s.mark_cursor is not None and cursors != list(range(s.mark_cursor + 1, s.mark_cursor + 1 + len(cursors))):
                noncontiguous += 1
            resets += s.resets
            if s.caught_up_ns is not None:
                catch_up_s.append((s.caught_up_ns - storm_ns) / 1e9)
        caught = len(catch_up_s)
        server_cpu = _diff(cpu_after, cpu_before)
        out.update({
            "storm_concurrency": args.storm_concurrency or len(specs),
            "reconnected": len(streams),
            "connect_failures": dict(failures),
            "connect_wall_s": connect_wall,
            "connect_ready_ms": percentiles(connect_ms),
            "caught_up": caught,
            "catch_up_s": percentiles(catch_up_s),
            "all_caught_up_s": (all_in_ns - storm_ns) / 1e9 if caught == len(old) else None,
            "within_10s": caught == len(old) and bool(catch_up_s) and max(catch_up_s) <= 10.0,
            "streams_with_gap": gaps,
            "streams_with_duplicate": dups,
            "streams_out_of_order": disorder,
            "streams_noncontiguous_cursor": noncontiguous,
            "resets": resets,
            "server_cpu_s": server_cpu,
            "server_cpu_us_per_client": _per(server_cpu, len(streams)),
            "loadgen_cpu_pct": own_cpu * 100 * 1e9 / (time.monotonic_ns() - storm_ns),
        })
        return out

    # -- end -----------------------------------------------------------------

    async def close_all(self):
        """Close every stream and wait (bounded) until the kernel reports them closed."""
        for s in self.streams:
            s.close()
        await self._wait_for(lambda: self.stats.open <= 0, 5, 0.05)
        self.result["end"] = {
            "streams_closed_early": self.stats.closed_early,
            "pings_received": self.stats.pings,
            "other_events": dict(self.stats.events),
            "bad_payloads": self.stats.bad_payloads,
            "id_regressions": self.stats.id_regressions,
            "still_open_after_close": self.stats.open,
        }

    async def run(self):
        """Run the chosen scenarios end to end.

        :returns: the full result document.
        :rtype: dict
        """
        scenarios = self.args.scenario
        try:
            if any(s in _STREAM_SCENARIOS for s in scenarios) and self.args.streams > 0:
                await self.open_streams()
            for name in scenarios:
                if name == "conns":
                    await self.hold()
                elif name == "peruser":
                    await self.peruser()
                elif name == "broadcast":
                    await self.broadcast()
                elif name == "create":
                    await self.create()
                elif name == "replay-storm":
                    await self.replay_storm()
        finally:
            await self.close_all()
        return self.result


def _fmt(value, spec=".1f"):
    if value is None:
        return "n/a"
    return format(value, spec)


def _fmt_pcts(p, unit):
    return "p50 %s  p90 %s  p99 %s  max %s %s  (n=%d)" % (
        _fmt(p["p50"], ".2f"), _fmt(p["p90"], ".2f"), _fmt(p["p99"], ".2f"),
        _fmt(p["max"], ".2f"), unit, p["count"])


def _counts(counter):
    return json.dumps(counter) if counter else "0"


def render(result):
    """Format a result document as a human-readable table.

    :param dict result: what :meth:`LoadGen.run` returned.
    :rtype: str
    """
    cfg = result["config"]
    rows = []
    c = result.get("conns")
    if c:
        rows.append(("conns", "%d streams (%d users x %d devices) -> %s:%d"
                     % (c["streams_requested"], c["users"], cfg["devices_per_user"],
                        cfg["host"], cfg["port"])))
        rows.append(("  streams ready", "%d / %d" % (c["streams_ready"], c["streams_requested"])))
        rows.append(("  failures", _counts(c["failures"])))
        rows.append(("  open wall time", "%s s (%s streams/s)"
                     % (_fmt(c["open_wall_s"], ".2f"), _fmt(c["streams_per_s"], ".0f"))))
        rows.append(("  connect->ready", _fmt_pcts(c["connect_ready_ms"], "ms")))
        rows.append(("  server RSS", "%s -> %s MB, %s KB/stream"
                     % (_fmt(c["server_rss_before_kb"] and c["server_rss_before_kb"] / 1024),
                        _fmt(c["server_rss_after_kb"] and c["server_rss_after_kb"] / 1024),
                        _fmt(c["server_rss_per_stream_kb"], ".2f"))))
        rows.append(("  server CPU", "%s s, %s us/stream opened"
                     % (_fmt(c["server_cpu_s"], ".2f"), _fmt(c["server_cpu_us_per_stream"], ".0f"))))
        rows.append(("  loadgen CPU", _client_cpu(c["loadgen_cpu_pct"])))
        if "pings_during_hold" in c:
            rows.append(("  pings in hold", "%d in %s s" % (c["pings_during_hold"], c["hold_s"])))
    p = result.get("peruser")
    if p:
        rows.append(("peruser", "%s/s for %s s, %d publisher connections"
                     % (_fmt(p["rate"], "g"), _fmt(p["duration_s"], "g"), cfg["publishers"])))
        rows.append(("  publishes", "%d sent, %d x 201, achieved %s/s"
                     % (p["publishes_sent"], p["publishes_201"], _fmt(p["achieved_rate"], ".1f"))))
        rows.append(("  non-201 / errors", "%s / %s" % (_counts(p["non_201"]), _counts(p["publish_errors"]))))
        rows.append(("  late sends", "%d (max lag %s ms)" % (p["late_sends"], _fmt(p["max_send_lag_ms"], ".2f"))))
        rows.append(("  deliveries", "%d received / %d expected%s"
                     % (p["deliveries_received"], p["deliveries_expected"],
                        "" if p["deliveries_received"] == p["deliveries_expected"] else "  MISMATCH")))
        rows.append(("  id regressions", str(p["id_regressions"])))
        rows.append(("  latency", _fmt_pcts(p["latency_ms"], "ms")))
        rows.append(("  server CPU", "%s s, %s us/publish, %s us/delivery"
                     % (_fmt(p["server_cpu_s"], ".2f"), _fmt(p["server_cpu_us_per_publish"], ".0f"),
                        _fmt(p["server_cpu_us_per_delivery"], ".0f"))))
        rows.append(("  loadgen CPU", _client_cpu(p["loadgen_cpu_pct"])))
    b = result.get("broadcast")
    if b:
        rows.append(("broadcast", "%d users, %d streams, %d request(s) per round, %d rounds (+%d warm-up)"
                     % (b["users"], b["streams"], b["requests_per_round"], b["rounds_measured"],
                        b["warmup_rounds"])))
        for r in b["rounds"]:
            rows.append(("  round %d%s" % (r["round"], " (warm-up)" if r["warmup"] else ""),
                         "%d/%d in %s ms, %s/s, %s us/delivery, p50 %s p99 %s max %s ms%s"
                         % (r["deliveries_received"], r["deliveries_expected"], _fmt(r["wall_ms"], ".0f"),
                            _fmt(r["deliveries_per_s"], ".0f"), _fmt(r["server_cpu_us_per_delivery"], ".1f"),
                            _fmt(r["latency_ms"]["p50"], ".1f"), _fmt(r["latency_ms"]["p99"], ".1f"),
                            _fmt(r["latency_ms"]["max"], ".1f"),
                            "" if set(r["requests"]) == {"202"} else "  requests " + _counts(r["requests"]))))
        rows.append(("  deliveries", "%d received / %d expected%s, id regressions %d"
                     % (b["deliveries_received"], b["deliveries_expected"],
                        "" if b["all_delivered"] else "  MISMATCH", b["id_regressions"])))
        rows.append(("  rate", "%s deliveries/s (median round)" % _fmt(b["deliveries_per_s_median"], ".0f")))
        rows.append(("  server CPU", "%s us/delivery (best round %s)"
                     % (_fmt(b["server_cpu_us_per_delivery"], ".1f"),
                        _fmt(b["server_cpu_us_per_delivery_best_round"], ".1f"))))
        rows.append(("  latency", _fmt_pcts(b["latency_ms"], "ms")))
        rows.append(("  loadgen CPU", _client_cpu(b["loadgen_cpu_pct"])))
    cr = result.get("create")
    if cr:
        for s in cr["steps"]:
            lag = s["loop_lag"]
            rows.append(("create x%d" % s["concurrency"],
                         "%s stored/s over %s s (seconds %s..%s), request p50 %s p99 %s ms, %s us/create, "
                         "server %s%% CPU%s"
                         % (_fmt(s["stored_per_s"], ".0f"), _fmt(s["window_s"], "g"),
                            _fmt(s["per_second_min"], "d"), _fmt(s["per_second_max"], "d"),
                            _fmt(s["request_ms"]["p50"], ".1f"), _fmt(s["request_ms"]["p99"], ".1f"),
                            _fmt(s["server_cpu_us_per_create"], ".0f"), _fmt(s["server_cpu_pct"], ".0f"),
                            "" if not (s["non_201"] or s["errors"]) else
                            "  non-201 %s errors %s" % (_counts(s["non_201"]), _counts(s["errors"])))))
            rows.append(("  loop lag", "n/a (no notify_loop_lag_seconds in /metrics)" if lag is None else
                         "p50 %s ms, p99 %s ms (bucket <= %s), max <= %s ms (stats' 10 s max %s), %d samples"
                         % (_fmt(lag["p50_ms"], ".2f"), _fmt(lag["p99_ms"], ".2f"), _fmt(lag["p99_le_ms"], "g"),
                            _fmt(lag["max_le_ms"], "g"), _fmt(lag["max_ms_recent"], ".1f"), lag["samples"])))
            rows.append(("  loadgen CPU", _client_cpu(s["loadgen_cpu_pct"])))
        rows.append(("create best", "%s stored/s at concurrency %d"
                     % (_fmt(cr["stored_per_s"], ".0f"), cr["concurrency"])))
    rs = result.get("replay_storm")
    if rs:
        rows.append(("replay-storm", "%d clients (%d users), each %d events behind"
                     % (rs["clients"], rs["users"], rs["behind"])))
        if "error" in rs:
            rows.append(("  ERROR", rs["error"]))
        else:
            rows.append(("  publishes", "mark %s, behind %s" % (_counts(rs["mark_requests"]),
                                                                  _counts(rs["publish_requests"]))))
            rows.append(("  reconnected", "%d / %d (at once: %d), failures %s, connect wall %s s"
                         % (rs["reconnected"], rs["clients"], rs["storm_concurrency"],
                            _counts(rs["connect_failures"]), _fmt(rs["connect_wall_s"], ".2f"))))
            rows.append(("  caught up", "%d / %d, all in %s s, within 10 s: %s"
                         % (rs["caught_up"], rs["clients"], _fmt(rs["all_caught_up_s"], ".2f"),
                            "yes" if rs["within_10s"] else "NO")))
            rows.append(("  catch-up time", _fmt_pcts(rs["catch_up_s"], "s")))
            rows.append(("  sequence check", "gap %d, duplicate %d, out of order %d, reset %d "
                         "(non-contiguous cursors %d)"
                         % (rs["streams_with_gap"], rs["streams_with_duplicate"], rs["streams_out_of_order"],
                            rs["resets"], rs["streams_noncontiguous_cursor"])))
            rows.append(("  server CPU", "%s s, %s us/client"
                         % (_fmt(rs["server_cpu_s"], ".2f"), _fmt(rs["server_cpu_us_per_client"], ".0f"))))
            rows.append(("  loadgen CPU", _client_cpu(rs["loadgen_cpu_pct"])))
    e = result.get("end")
    if e:
        rows.append(("end", "closed early %d, pings %d, other events %s, bad payloads %d"
                     % (e["streams_closed_early"], e["pings_received"], _counts(e["other_events"]),
                        e["bad_payloads"])))
    if not rows:
        return "(nothing measured)"
    width = max(len(k) for k, _ in rows)
    return "\n".join("%-*s  %s" % (width, k, v) for k, v in rows)


def _client_cpu(pct):
    if pct is None:
        return "n/a"
    flag = "  CLIENT-BOUND: figures may reflect the load generator" if pct > _CLIENT_BOUND_PCT else ""
    return "%.0f%% of one core%s" % (pct, flag)


def _raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if needed > soft:
        sys.exit("need about %d file descriptors, the limit is %d" % (needed, soft))


def _int_list(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got %r" % text) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, got %r" % text)
    return values


def parse_args(argv=None):
    """Parse the command line.

    :param list argv: arguments, default ``sys.argv[1:]``.
    :rtype: argparse.Namespace
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("scenario", nargs="+", choices=SCENARIOS,
                    help="one or more, run in this order on the same streams")
    ap.add_argument("--host", default="127.0.0.1", help="server address (loopback only)")
    ap.add_argument("--port", type=int, default=8888)
    ap.add_argument("--publish-port", type=int, default=None,
                    help="peruser: POST to this port (another process of the same service) "
                         "instead of --port, to measure cross-process delivery")
    ap.add_argument("--jwt-secret", required=True, help="the server's HS256 secret")
    ap.add_argument("--jwt-ttl", type=int, default=3600, help="token lifetime, seconds")
    ap.add_argument("--streams", "-n", type=int, default=3000, help="SSE streams to open")
    ap.add_argument("--devices-per-user", type=int, default=3)
    ap.add_argument("--connect-concurrency", type=int, default=200)
    ap.add_argument("--connect-timeout", type=float, default=30.0,
                    help="seconds for one stream to reach ready")
    ap.add_argument("--connect-phase-timeout", type=float, default=300.0,
                    help="no new stream is started after this many seconds")
    ap.add_argument("--source-ips", type=int, default=8,
                    help="spread streams over 127.0.0.2 .. 127.0.0.(1+K)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between the last ready and the RSS reading")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="conns: seconds to keep the streams open before closing")
    ap.add_argument("--rate", type=float, default=200.0, help="peruser: publishes per second")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="peruser: seconds of publishing; create: seconds of each measured window")
    ap.add_argument("--publishers", type=int, default=16, help="peruser: keep-alive connections")
    ap.add_argument("--request-timeout", type=float, default=10.0, help="per API request")
    ap.add_argument("--drain", type=float, default=5.0,
                    help="peruser: max seconds to wait for deliveries after the last answer")
    ap.add_argument("--seed", type=int, default=1, help="user choice seed")
    ap.add_argument("--event-batch", type=int, default=1000,
                    help="userIds per POST /api/v1/events (the contract allows 1..1000)")
    ap.add_argument("--bcast-rounds", type=int, default=5, help="broadcast: measured rounds")
    ap.add_argument("--bcast-warmup", type=int, default=1, help="broadcast: unmeasured rounds first")
    ap.add_argument("--bcast-pause", type=float, default=1.0,
                    help="broadcast/create: seconds of quiet before each round or step")
    ap.add_argument("--bcast-timeout", type=float, default=30.0,
                    help="broadcast: max seconds for one round's deliveries")
    ap.add_argument("--create-concurrency", type=_int_list, default=[16, 64, 256],
                    help="create: keep-alive connections posting back to back, one step per value")
    ap.add_argument("--create-warmup", type=float, default=2.0,
                    help="create: seconds before each step's window")
    ap.add_argument("--create-users", type=int, default=1000, help="create: random recipients")
    ap.add_argument("--replay-behind", type=int, default=10,
                    help="replay-storm: events each user misses while away")
    ap.add_argument("--storm-concurrency", type=int, default=0,
                    help="replay-storm: reconnects in flight at once (0: all)")
    ap.add_argument("--storm-timeout", type=float, default=30.0,
                    help="replay-storm: max seconds from the storm's start to everyone caught up")
    ap.add_argument("--storm-settle", type=float, default=0.5,
                    help="replay-storm: seconds to wait for duplicates after the last catch-up")
    ap.add_argument("--server-pid", type=int, help="read RSS and CPU of this process")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    ap.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    args = ap.parse_args(argv)
    if not args.host.startswith("127."):
        ap.error("--host must be a loopback address (127.0.0.0/8)")
    if min(args.devices_per_user, args.connect_concurrency, args.source_ips, args.publishers,
           args.bcast_rounds, args.create_users, args.replay_behind) < 1 \
            or args.rate <= 0 or args.duration <= 0 or args.streams < 0:
        ap.error("counts, --rate and --duration must be positive")
    if not 1 <= args.event_batch <= 1000:
        ap.error("--event-batch must be 1..1000 (the contract's limit)")
    if args.streams == 0 and set(args.scenario) & set(_STREAM_SCENARIOS):
        ap.error("%s need --streams above 0" % ", ".join(sorted(set(args.scenario) & set(_STREAM_SCENARIOS))))
    return args


def passed(result):
    """Whether every measured scenario completed without a loss or a failure.

    Not the performance targets (``bench/run`` judges those), only that the
    figures are whole: every stream ready, every request accepted, every
    delivery arrived, the replay sequences exact.

    :param dict result: what :meth:`LoadGen.run` returned.
    :rtype: bool
    """
    ok = True
    c = result.get("conns")
    if c:
        ok = ok and c["streams_ready"] == c["streams_requested"]
    p = result.get("peruser")
    if p:
        ok = ok and p["publishes_201"] == p["publishes_sent"] and \
            p["deliveries_received"] == p["deliveries_expected"]
    b = result.get("broadcast")
    if b:
        ok = ok and b["all_delivered"] and b["all_accepted"]
    cr = result.get("create")
    if cr:
        ok = ok and all(not s["non_201"] and not s["errors"] for s in cr["steps"])
    rs = result.get("replay_storm")
    if rs:
        ok = ok and "error" not in rs and rs["caught_up"] == rs["clients"] and not (
            rs["streams_with_gap"] or rs["streams_with_duplicate"] or rs["streams_out_of_order"]
            or rs["resets"])
    return ok


def main(argv=None):
    """Entry point.

    :returns: 0 when :func:`passed`, 1 otherwise.
    :rtype: int
    """
    args = parse_args(argv)
    concurrency = max(args.create_concurrency) if "create" in args.scenario else 0
    # replay-storm closes every stream (and waits for it) before reconnecting
    # them, so it never holds more than --streams at once either.
    _raise_fd_limit(args.streams + args.publishers + concurrency + 64)
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            pass
    args.loop = "uvloop" if runner is not asyncio.run else "asyncio"
    result = runner(LoadGen(args).run())
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if passed(result) else 1


if __name__ == "__main__":
    sys.exit(main())
