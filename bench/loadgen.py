#!/usr/bin/env python3
"""Raw-socket load generator for the SSE notification server.

One asyncio process (uvloop when installed), no HTTP client library: every
stream is an :class:`asyncio.Protocol` with an incremental chunked + SSE
parser, and publishes go over a small pool of keep-alive HTTP/1.1
connections.

Scenarios:

``conns``
    Open ``--streams`` SSE streams (``--devices-per-user`` per user ``bench_u{i}``),
    wait for every ``event: ready``, report connect time, failures, the
    server's RSS and CPU per stream (``--server-pid``), optionally hold them
    open ``--hold`` seconds (to count ``: ping`` comments), close them.
``peruser``
    The ``conns`` phase, then ``--rate`` notifications per second for
    ``--duration`` seconds, open loop, each to a random user; every device
    measures receipt time minus the ``data.t`` stamped at send.  Reports the
    latency distribution, deliveries expected vs received, non-201 answers,
    server CPU per publish and the load generator's own CPU.

Only loopback targets are meant (``127.0.0.0/8``); every phase is bounded by a
duration or a timeout and every socket is closed at the end.

Example::

    .venv/bin/python bench/loadgen.py peruser --streams 3000 --rate 200 \\
        --duration 10 --jwt-secret S --server-pid 1234 --json out.json
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
import resource
import socket
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
# Above this the single loadgen thread, not the server, may be what limits
# the figures.
_CLIENT_BOUND_PCT = 80.0

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
    :ivar array.array latencies_ms: receipt minus send time, while ``recording``.
    :ivar int pings: ``: ping`` comments received.
    :ivar collections.Counter events: other named events, by name.
    :ivar int id_regressions: frames whose ``id:`` was not above the previous
        one on the same stream (duplicates or reordering).
    :ivar int bad_payloads: notification frames without a numeric ``data.t``.
    :ivar int open: streams currently connected.
    :ivar int closed_early: streams that ended before the load generator closed them.
    """

    def __init__(self):
        self.deliveries = 0
        self.latencies_ms = array.array("d")
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
    :ivar asyncio.Future ready: resolves on ``event: ready``; fails on a
        non-200 status or a close before it.
    """

    def __init__(self, request, stats, user_idx):
        self._request = request
        self._stats = stats
        self._parser = SSEParser(self)
        self._last_id = -1
        self._closing = False
        self.user_idx = user_idx
        self.transport = None
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
        """Parser callback: count ``ready``, notifications and named events."""
        stats = self._stats
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
                sent_ns = json.loads(data)["data"]["t"]
                latency_ms = (now_ns - sent_ns) / 1e6
            except (ValueError, KeyError, TypeError):
                stats.bad_payloads += 1
                return
            stats.deliveries += 1
            if stats.recording:
                stats.latencies_ms.append(latency_ms)
        elif name == b"ready":
            if not self.ready.done():
                self.ready.set_result(None)
        else:
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
        """:returns: utime + stime in seconds, or ``None`` without a readable pid."""
        if self.pid is None:
            return None
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


class Publisher:
    """One keep-alive HTTP/1.1 connection that POSTs notifications.

    It reconnects on the next use after any error or ``Connection: close``.

    :param tuple target: ``(host, port)``.
    :param str token: the publisher's JWT.
    :param float timeout: seconds allowed for one request.
    """

    def __init__(self, target, token, timeout):
        self._target = target
        self._timeout = timeout
        self._prefix = ("Host: %s:%d\r\nAuthorization: Bearer %s\r\n"
                        "Content-Type: application/json\r\n" % (target[0], target[1], token))
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
            the body is taken as late as possible.
        :returns: the response status.
        :rtype: int
        """
        try:
            return await asyncio.wait_for(self._post(path, make_body), self._timeout)
        except BaseException:
            self.close()
            raise

    async def _post(self, path, make_body):
        await self.connect()
        body = make_body()
        self._writer.write(b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                           % (path.encode(), self._prefix.encode(), len(body), body))
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        status = int(lines[0].split(None, 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                await self._reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await self._reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection") == b"close":
            self.close()
        return status


class LoadGen:
    """Drives one run: opens the streams, runs the scenario, closes everything.

    :param argparse.Namespace args: parsed command line.
    """

    def __init__(self, args):
        self.args = args
        self.target = (args.host, args.port)
        self.stats = Stats()
        self.streams = []
        self.probe = ServerProbe(args.server_pid)
        self.result = {"config": {k: v for k, v in vars(args).items() if k != "jwt_secret"}}

    def _user(self, idx):
        return "bench_u%d" % idx

    async def open_streams(self):
        """Open ``--streams`` streams with bounded concurrency and measure the server.

        :returns: the ``conns`` figures.
        :rtype: dict
        """
        args = self.args
        loop = asyncio.get_running_loop()
        n = args.streams
        n_users = math.ceil(n / args.devices_per_user)
        host = "%s:%d" % self.target
        requests = []
        for u in range(n_users):
            token = mint_token(args.jwt_secret, self._user(u), "user", args.jwt_ttl)
            requests.append((
                "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
                % (_STREAM_PATH % self._user(u), host, token)).encode())
        sources = ["127.0.0.%d" % (2 + i) for i in range(args.source_ips)]
        connect_ms = array.array("d")
        failures = collections.Counter()
        indices = iter(range(n))
        deadline = loop.time() + args.connect_phase_timeout

        async def open_one(idx):
            user_idx = idx // args.devices_per_user
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
                lambda: SSEStream(requests[user_idx], self.stats, user_idx), sock=sock)
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
                        proto = await open_one(idx)
                except Exception as exc:  # every failure is a figure, not a crash
                    failures[_reason(exc)] += 1
                    continue
                connect_ms.append((time.perf_counter() - started) * 1e3)
                self.streams.append(proto)

        rss_before = self.probe.rss_kb()
        cpu_before = self.probe.cpu_s()
        own_before = _own_cpu_s()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(args.connect_concurrency, n))))
        wall = time.perf_counter() - started
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
            "server_rss_per_stream_kb": ((rss_after - rss_before) / n
                                         if rss_before is not None and rss_after is not None
                                         else None),
            "server_cpu_s": (cpu_after - cpu_before) if cpu_before is not None else None,
            "server_cpu_us_per_stream": ((cpu_after - cpu_before) * 1e6 / ready
                                         if cpu_before is not None and ready else None),
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

    async def peruser(self):
        """Publish open-loop at ``--rate`` for ``--duration`` s to random users.

        :returns: the ``peruser`` figures.
        :rtype: dict
        """
        args = self.args
        loop = asyncio.get_running_loop()
        stats = self.stats
        rng = random.Random(args.seed)
        devices = collections.Counter(s.user_idx for s in self.streams)
        users = sorted(devices)
        token = mint_token(args.jwt_secret, "bench_publisher", "publisher", args.jwt_ttl)
        publish_target = (args.host, args.publish_port or args.port)
        pool = [Publisher(publish_target, token, args.request_timeout)
                for _ in range(args.publishers)]
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

            def body():
                return json.dumps({"type": "info", "message": "bench",
                                   "data": {"t": time.monotonic_ns()}}).encode()
            try:
                status = await pub.post(_NOTIFY_PATH % self._user(user_idx), body)
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
        drain_deadline = loop.time() + args.drain
        while stats.deliveries - received_before < expected and loop.time() < drain_deadline:
            await asyncio.sleep(0.01)
        stats.recording = False
        wall = clock() - started
        cpu_after = self.probe.cpu_s()
        own_cpu = _own_cpu_s() - own_before
        for p in pool:
            p.close()
        created = statuses.get(201, 0)
        received = stats.deliveries - received_before
        server_cpu = (cpu_after - cpu_before) if cpu_before is not None else None
        out = {
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
            "server_cpu_us_per_publish": (server_cpu * 1e6 / created
                                          if server_cpu is not None and created else None),
            "server_cpu_us_per_delivery": (server_cpu * 1e6 / received
                                           if server_cpu is not None and received else None),
            "loadgen_cpu_pct": own_cpu * 100 / wall if wall else None,
        }
        self.result["peruser"] = out
        return out

    async def close_all(self):
        """Close every stream and wait (bounded) until the kernel reports them closed."""
        loop = asyncio.get_running_loop()
        for s in self.streams:
            s.close()
        deadline = loop.time() + 5
        while self.stats.open > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.result["end"] = {
            "streams_closed_early": self.stats.closed_early,
            "pings_received": self.stats.pings,
            "other_events": dict(self.stats.events),
            "bad_payloads": self.stats.bad_payloads,
            "still_open_after_close": self.stats.open,
        }

    async def run(self):
        """Run the chosen scenario end to end.

        :returns: the full result document.
        :rtype: dict
        """
        try:
            await self.open_streams()
            if self.args.scenario == "conns":
                await self.hold()
            else:
                await self.peruser()
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
        rows.append(("  failures", json.dumps(c["failures"]) if c["failures"] else "0"))
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
        rows.append(("  non-201 / errors", "%s / %s" % (json.dumps(p["non_201"]) if p["non_201"] else "0",
                                                        json.dumps(p["publish_errors"]) if p["publish_errors"] else "0")))
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
    e = result.get("end")
    if e:
        rows.append(("end", "closed early %d, pings %d, other events %s, bad payloads %d"
                     % (e["streams_closed_early"], e["pings_received"],
                        json.dumps(e["other_events"]) if e["other_events"] else "0",
                        e["bad_payloads"])))
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


def parse_args(argv=None):
    """Parse the command line.

    :param list argv: arguments, default ``sys.argv[1:]``.
    :rtype: argparse.Namespace
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("scenario", choices=("conns", "peruser"))
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
    ap.add_argument("--duration", type=float, default=20.0, help="peruser: seconds of publishing")
    ap.add_argument("--publishers", type=int, default=16, help="peruser: keep-alive connections")
    ap.add_argument("--request-timeout", type=float, default=10.0, help="peruser: per POST")
    ap.add_argument("--drain", type=float, default=5.0,
                    help="peruser: max seconds to wait for deliveries after the last answer")
    ap.add_argument("--seed", type=int, default=1, help="peruser: user choice seed")
    ap.add_argument("--server-pid", type=int, help="read RSS and CPU of this process")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    ap.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    args = ap.parse_args(argv)
    if not args.host.startswith("127."):
        ap.error("--host must be a loopback address (127.0.0.0/8)")
    if min(args.streams, args.devices_per_user, args.connect_concurrency, args.source_ips,
           args.publishers) < 1 or args.rate <= 0 or args.duration <= 0:
        ap.error("counts, --rate and --duration must be positive")
    return args


def main(argv=None):
    """Entry point.

    :returns: 0 when every stream got ready and, for ``peruser``, every
        publish answered 201 and every delivery arrived; 1 otherwise.
    :rtype: int
    """
    args = parse_args(argv)
    _raise_fd_limit(args.streams + args.publishers + 64)
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
    ok = result["conns"]["streams_ready"] == args.streams
    p = result.get("peruser")
    if p:
        ok = ok and p["publishes_201"] == p["publishes_sent"] and \
            p["deliveries_received"] == p["deliveries_expected"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
