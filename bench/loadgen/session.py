"""One run of the load generator: the state every scenario shares (streams,
counters, server probe, tokens), opening streams with bounded concurrency,
running the chosen scenarios in order, closing everything at the end.
"""

import array
import asyncio
import collections
import json
import socket
import time

from .clients import STREAM_PATH, Client, SSEStream, failure_reason, mint_token
from .scenarios import RUNNERS, STREAM_SCENARIOS
from .scenarios.conns import open_streams
from .stats import ServerProbe, Stats

# Linux value; Python exposes the constant only on recent builds.  With it the
# kernel picks the source port at connect() time against the full 4-tuple, so
# binding to an address does not reserve a port per socket up front.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class LoadGen:
    """Drives one run: opens the streams, runs the scenarios, closes everything.

    The scenarios (:mod:`bench.loadgen.scenarios`) are functions of this
    object: they use its streams, counters and helpers and store their
    figures in :attr:`result`.

    :param argparse.Namespace args: parsed command line.
    :ivar list streams: the open :class:`~bench.loadgen.clients.SSEStream` objects.
    :ivar dict result: the result document, one key per scenario.
    """

    def __init__(self, args):
        self.args = args
        self.target = (args.host, args.port)
        self.stats = Stats()
        self.streams = []
        self.probe = ServerProbe(args.server_pid)
        self.result = {"config": {k: v for k, v in vars(args).items() if k != "jwt_secret"}}
        self._publisher_token = mint_token(args.jwt_secret, "bench_publisher", "publisher", args.jwt_ttl)
        self._sources = ["127.0.0.%d" % (2 + i) for i in range(args.source_ips)]

    def user(self, idx):
        """:returns: the user id of user index ``idx``."""
        return "bench_u%d" % idx

    def client(self, port=None, token=None):
        """A new API connection (not yet open).

        :param int port: default ``--port``.
        :param str token: default a publisher's.
        :rtype: ~bench.loadgen.clients.Client
        """
        return Client((self.args.host, port or self.args.port), token or self._publisher_token,
                      self.args.request_timeout)

    def stream_request(self, user_idx, last_event_id=None):
        """The complete stream request of one user, with its own token.

        :param int user_idx: the user's index.
        :param int last_event_id: sent as ``Last-Event-ID`` when given.
        :rtype: bytes
        """
        args = self.args
        token = mint_token(args.jwt_secret, self.user(user_idx), "user", args.jwt_ttl)
        extra = "Last-Event-ID: %d\r\n" % last_event_id if last_event_id is not None else ""
        return ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n%s\r\n"
                % (STREAM_PATH % self.user(user_idx), args.host, args.port, token, extra)).encode()

    def devices(self):
        """:returns: ``Counter`` user index -> open streams of that user."""
        return collections.Counter(s.user_idx for s in self.streams)

    def user_batches(self, users):
        """``users`` (indices) cut into JSON arrays of at most ``--event-batch`` ids.

        :rtype: list of bytes
        """
        size = self.args.event_batch
        return [json.dumps([self.user(u) for u in users[i:i + size]]).encode()
                for i in range(0, len(users), size)]

    async def connect_many(self, specs, concurrency, phase_timeout, expect_replay=0):
        """Open one stream per spec, ``concurrency`` at a time, each until ``ready``.

        :param list specs: ``(request bytes, user index, last id)`` per stream.
        :param int expect_replay: see :class:`~bench.loadgen.clients.SSEStream`.
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
                    failures[failure_reason(exc)] += 1
                    continue
                connect_ms.append((time.perf_counter() - started) * 1e3)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
        wall = time.perf_counter() - started
        return [s for s in opened if s is not None], connect_ms, failures, wall

    async def wait_for(self, condition, timeout, step=0.005):
        """Poll ``condition()`` until it holds or ``timeout`` s pass; :returns: whether it held."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(step)
        return True

    async def close_all(self):
        """Close every stream and wait (bounded) until the kernel reports them closed."""
        for s in self.streams:
            s.close()
        await self.wait_for(lambda: self.stats.open <= 0, 5, 0.05)
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
            if any(s in STREAM_SCENARIOS for s in scenarios) and self.args.streams > 0:
                await open_streams(self)
            for name in scenarios:
                await RUNNERS[name](self)
        finally:
            await self.close_all()
        return self.result
