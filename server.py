"""The notification server: build the application, run it, and the CLI.

``make_app(config)`` builds the database, the bus, the SSE manager and the
services once and hands them to the handlers.  ``main()`` parses flags (each
also read from ``NOTIFY_*``), runs the subcommands ``create-user`` and
``issue-token``, or serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import tornado.netutil
import tornado.web
from tornado import httputil
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.platform.asyncio import BaseAsyncIOLoop

from core.domain.auth import ROLES, TokenService
from core.domain.errors import Unavailable
from core.domain.passwords import PasswordPool
from core.domain.ratelimit import RateLimiter
from core.domain.service import DOMAIN_EVENTS, NotificationService
from core.domain.validation import check_user_id
from core.fanout.broker import Broker, LocalBroker
from core.fanout.event_bus import EventBus
from core.fanout.messages import StreamMessage
from core.fanout.redis_broker import RedisBroker
from core.runtime.config import Config, ConfigError, add_options, build_config, parse_origins
from core.runtime.looplag import LoopLagMonitor
from core.runtime.metrics import Metrics
from core.runtime.supervisor import ChildLink, Supervisor
from core.streams.manager import StreamManager
from core.streams.replay import Replayer
from core.transport.http1 import HTTP1Server, HTTPCounters
from handlers.call import Deps
from handlers.cors import CorsPolicy
from handlers.http import log_access
from handlers.lane import LaneSorter
from handlers.routes import ROUTES
from handlers.static import STATIC_DIR, StaticHandler
from handlers.tornado_door import NotFoundHandler, RouteHandler
from models.runner import DatabaseRunner
from models.tables import create_schema, database, is_memory, open_database

log = logging.getLogger("notify")

DEMO_USERS = (
    ("empresaabc_123", "user"),
    ("empresaxyz_456", "user"),
    ("empresadef_789", "user"),
    ("demo_publisher", "publisher"),
)
DEMO_PASSWORD = "demo"

#: Seconds between retention runs.
PRUNE_EVERY = 3600
#: Seconds between deletes of expired stream tickets (which live 30 s).
TICKET_PRUNE_EVERY = 60
#: Seconds between SQLite write-ahead log checkpoints.
CHECKPOINT_EVERY = 1
#: Seconds shutdown waits for requests in flight before closing connections.
SHUTDOWN_GRACE = 8.0


class StartupError(Exception):
    """The server cannot start; the message says why (no traceback).

    :param exit_code: 2 for a configuration the user must change (like a bad
        flag), 1 for a failure of the environment (database, port).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access-log hook: one line per request (see :func:`handlers.http.log_access`)."""
    request = handler.request
    log_access(handler.get_status(), request.method, request.path, request.request_time())


def wire(bus: EventBus, broker: Broker, manager: StreamManager, replay: Replayer, spawn: Callable[[Any], None]) -> None:
    """Connect the bus to the SSE manager through the broker (as in the seed).

    Every stored change goes ``bus -> broker -> every process's manager``; a
    device that sees a cursor skip ahead catches up from the store.
    """
    for name in DOMAIN_EVENTS:
        bus.on(name, broker.publish)
    manager.on_gap = lambda device: spawn(replay.catch_up(device))


def deliver_to(manager: StreamManager):
    """The broker's delivery callback: push a message to its user's devices."""

    publish = manager.publish

    def deliver(message: StreamMessage) -> None:
        user_id, cursor, event, data, exclude = message
        publish(user_id, data, event, cursor, exclude)

    return deliver


def load_tokens(config: Config) -> TokenService:
    """The token service for the configured secret and/or public key.

    :raises StartupError: no key outside ``--demo``, or an unreadable key.
    """
    if not config.jwt_secret and not config.jwt_public_key:
        if not config.demo:
            raise StartupError(
                "no JWT key: pass --jwt-secret or --jwt-public-key (or --demo for a generated dev secret)"
            )
        config.jwt_secret = secrets.token_urlsafe(32)
        log.warning("demo mode: using a generated development JWT secret (tokens die with this process)")
    pem = b""
    if config.jwt_public_key:
        try:
            with open(config.jwt_public_key, "rb") as handle:
                pem = handle.read()
        except OSError as exc:
            raise StartupError(f"cannot read --jwt-public-key {config.jwt_public_key}: {exc.strerror}") from None
    try:
        return TokenService(config.jwt_secret, pem, audience=config.jwt_audience, issuer=config.jwt_issuer)
    except ValueError as exc:
        raise StartupError(f"--jwt-public-key: {exc}") from None


class NotifyApp(tornado.web.Application):
    """The Tornado application plus the services behind it.

    Build with :func:`make_app`, then ``await app.start()`` on the loop that
    will serve it, and ``await app.stop()`` at the end.
    """

    def __init__(self, config: Config, deps: Deps, runner: DatabaseRunner, bus: EventBus, lanes: bool = True) -> None:
        self.config = config
        self.deps = deps
        self.runner = runner
        self.bus = bus
        #: Whether the routes are served by the lane (:mod:`handlers.lane`);
        #: False sends every request through Tornado's RequestHandlers.
        self.lanes = lanes
        self._prune: PeriodicCallback | None = None
        self._prune_tickets: PeriodicCallback | None = None
        self._checkpoint: PeriodicCallback | None = None
        self._checkpoint_logged = -60.0
        #: Background jobs (catch-ups) in flight.
        self._background: set[asyncio.Future[Any]] = set()
        self._stopping = False
        handlers: list[Any] = [(route.pattern, RouteHandler, {"deps": deps, "route": route}) for route in ROUTES]
        handlers += [
            (r"/static/(.*)", StaticHandler, {"path": STATIC_DIR, "deps": deps}),
            (r"/()", StaticHandler, {"path": STATIC_DIR, "default_filename": "index.html", "deps": deps}),
        ]
        super().__init__(
            handlers,
            default_handler_class=NotFoundHandler,
            default_handler_args={"deps": deps},
            log_function=log_request,
            # Compression would rewrite chunks behind the stream writer's back.
            compress_response=False,
            static_path=None,
        )

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """Each request goes to the lane (a route) or to Tornado's routing, on its headers (:mod:`handlers.lane`)."""
        if not self.lanes:
            return self.route_request(server_conn, request_conn)
        return LaneSorter(self, self.deps, server_conn, request_conn)

    def route_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """Tornado's own routing to a RequestHandler."""
        return super().start_request(server_conn, request_conn)

    @property
    def service(self) -> NotificationService:
        """The use cases."""
        return self.deps.service

    @property
    def replay(self) -> Replayer:
        """Replays and catch-ups of this process's streams."""
        return self.deps.replay

    @property
    def manager(self) -> StreamManager:
        """The SSE manager."""
        return self.deps.manager

    async def start(self) -> None:
        """Create the schema, demo users, and start the timers and the broker."""
        try:
            self.runner.run_sync(create_schema)
        except Exception as exc:
            raise StartupError(f"cannot open the database: {_first_line(exc)}", exit_code=1) from None
        self.bus.bind(asyncio.get_running_loop())
        wire(self.bus, self.deps.broker, self.deps.manager, self.replay, self.spawn)
        await self.deps.broker.start(deliver_to(self.deps.manager), self._resync, self.deps.manager.get_stats)
        self.deps.manager.start()
        self.deps.loop_lag.start()
        if self.config.demo:
            for user_id, role in DEMO_USERS:
                await self.service.create_user(user_id, DEMO_PASSWORD, role, replace=True)
        await self.service.prune()
        self._prune = PeriodicCallback(self._run_prune, PRUNE_EVERY * 1000)
        self._prune.start()
        self._prune_tickets = PeriodicCallback(self._run_prune_tickets, TICKET_PRUNE_EVERY * 1000)
        self._prune_tickets.start()
        if self.config.db_url.startswith("sqlite:///") and not is_memory(self.config.db_url):
            # Only a SQLite file has a write-ahead log to fold back.
            self._checkpoint = PeriodicCallback(self._run_checkpoint, CHECKPOINT_EVERY * 1000)
            self._checkpoint.start()

    def _resync(self) -> None:
        """After the broker lost messages: catch every open stream up."""
        self.spawn(self.replay.catch_up_all())

    def spawn(self, job: Any) -> None:
        """Run the coroutine ``job`` in the background, held until it is done (the loop keeps only weak references)."""
        task = asyncio.ensure_future(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_checkpoint(self) -> None:
        try:
            await self.service.checkpoint()
        except Unavailable as exc:
            if self._stopping:
                return  # a pass in flight when the runner closed: nothing lost
            # The database is out of reach (or the process out of
            # descriptors): /health says so; one line a minute, not a
            # traceback every second.
            now = time.monotonic()
            if now - self._checkpoint_logged >= 60.0:
                self._checkpoint_logged = now
                log.warning("write-ahead log checkpoint failed: %s", exc.__cause__ or exc)
        except Exception:
            log.warning("write-ahead log checkpoint failed", exc_info=True)

    async def _run_prune(self) -> None:
        try:
            await self.service.prune()
        except Exception:
            log.exception("retention run failed")

    async def _run_prune_tickets(self) -> None:
        try:
            await self.service.prune_tickets()
        except Unavailable:
            # The database is out of reach (/health says so); the next run,
            # a minute later, retries.  No traceback: nothing is wrong here.
            log.warning("expired stream tickets could not be deleted: the database is unavailable")
        except Exception:
            log.exception("expired stream tickets could not be deleted")

    async def stop(self, http: HTTP1Server | None = None, grace: float = SHUTDOWN_GRACE) -> int:
        """Shut down, in the one order that loses nothing; :returns: how many streams were ended.

        Stop accepting (``http``, when given), end every stream with the
        chunked terminator (browsers reconnect, to another instance if there
        is one, and resume from their last event id), let the requests in
        flight finish (within ``grace`` seconds in all), close what is left
        of the connections, then release the broker, the password pool and
        the database.
        """
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for timer in (self._prune, self._prune_tickets, self._checkpoint):
            if timer is not None:
                timer.stop()
        self.deps.loop_lag.stop()
        if http is not None:
            http.stop()
        ended = self.deps.manager.shutdown()
        await self.deps.manager.wait_ended(grace)
        if http is not None:
            while self.deps.http_counters.in_flight > 0 and loop.time() < deadline:
                await asyncio.sleep(0.05)
            await http.close_all_connections()
        self.deps.manager.stop()
        await self.deps.broker.close()
        self.bus.clear()
        self.service.passwords.close()
        await loop.run_in_executor(None, self.runner.close)
        return ended


def _open_runner(config: Config) -> DatabaseRunner:
    try:
        db = open_database(config.db_url)
    except ValueError as exc:
        raise StartupError(f"--db-url: {exc}") from None
    database.initialize(db)
    io_loop = IOLoop.current()
    assert isinstance(io_loop, BaseAsyncIOLoop)  # Tornado 6: every IOLoop runs on asyncio
    loop = io_loop.asyncio_loop
    return DatabaseRunner(db, loop, readers=0 if is_memory(config.db_url) else 4)


def make_app(config: Config, lanes: bool = True) -> NotifyApp:
    """Build the application for ``config`` on the current loop (call ``start()`` next).

    :param lanes: serve the routes through the lane (the default); False
        serves every request through Tornado's RequestHandlers (the tests
        run the API through both doors).
    """
    tokens = load_tokens(config)
    runner = _open_runner(config)
    bus = EventBus()
    instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    manager = StreamManager(config.max_devices_per_user, config.keepalive_interval, instance_id)
    service = NotificationService(
        runner, bus, tokens, history_days=config.history_days, token_ttl=config.token_ttl, passwords=PasswordPool()
    )
    http_counters = HTTPCounters()
    loop_lag = LoopLagMonitor()
    try:
        # An unreachable Redis is not fatal (the broker reports itself down
        # and keeps retrying); a URL that can never work is.
        broker = (
            RedisBroker(config.redis_url, instance_id, namespace=config.redis_namespace)
            if config.redis_url
            else LocalBroker()
        )
    except ValueError as exc:
        runner.close()
        raise StartupError(f"--redis-url: {exc}") from None
    deps = Deps(
        config=config,
        service=service,
        manager=manager,
        tokens=tokens,
        broker=broker,
        instance_id=instance_id,
        metrics=Metrics(manager, http_counters, loop_lag),
        http_counters=http_counters,
        loop_lag=loop_lag,
        cors=CorsPolicy(parse_origins(config.cors_origins)),
        publish_limiter=RateLimiter(config.publish_rate, config.publish_burst) if config.publish_rate > 0 else None,
        write_limiter=RateLimiter(config.write_rate, config.write_burst) if config.write_rate > 0 else None,
        replay=Replayer(manager, service),
    )
    return NotifyApp(config, deps, runner, bus, lanes=lanes)


def make_http_server(app: NotifyApp) -> HTTP1Server:
    """The HTTP server for ``app``, with the connection limits of its config.

    The connection layer is :mod:`core.transport.http1` (httptools underneath
    Tornado's Application), not Tornado's own ``HTTPServer``: it costs less
    than half as much CPU per request (see docs/PERFORMANCE.md).

    - ``--idle-timeout`` is the deadline for a request's whole header
      block, which also bounds the wait for the next request on a
      kept-alive connection: a client that sends half a request line, or
      trickles its headers (slow loris), is cut off then.  It never applies
      once a request is read, so streams stay open.
    - ``--body-timeout`` bounds the time to send a body.
    - Both are kept by one periodic sweep, not a timer per request.
    - ``max_header_size``: the handlers answer 431 over ``--max-header-kb``;
      a header block must be buffered before anyone can look at it, so past
      twice that (at least 64 KiB) it is not read further: 431, and the
      connection closes.
    - ``max_body_size`` applies only where a handler does not count the body
      itself (every route here does, see ``handlers.http.BodyLimit``).
    - ``--max-connections`` counts every open connection, event streams
      (which have left the HTTP layer) included; 0 = the descriptor limit
      minus a reserve for the database, Redis and the listeners.
    """
    config = app.config
    return HTTP1Server(
        app,
        max_header_size=max(2 * config.max_header_kb * 1024, 64 * 1024),
        max_body_size=config.max_body_kb * 1024,
        idle_timeout=config.idle_timeout,
        body_timeout=config.body_timeout,
        max_connections=config.max_connections,
        open_elsewhere=app.deps.manager.device_count,
        counters=app.deps.http_counters,
    )


#: Seconds between full collections that look at frozen objects too.
GC_SWEEP_INTERVAL = 60.0


def tune_gc(manager: StreamManager, sweep_interval: float = GC_SWEEP_INTERVAL) -> PeriodicCallback:
    """Keep garbage collection from pausing thousands of streams.

    With 18,000 streams a full collection over every stream's objects
    stalls every stream (measured: pauses of up to 0.7 s).  Objects alive after start-up,
    and the objects of streams that stay open, are not garbage:
    ``gc.freeze()`` moves them out of the collector's sight.  It runs once
    at start-up and then once a second while new streams are arriving,
    each time after a collection of what is not frozen yet (objects of the
    last second, so it stays short): garbage not yet collected would be
    frozen too.  The thresholds stay at Python's defaults: a young
    generation of 50,000 objects (as some tunings use) takes about 7 ms to
    collect, which showed in the p99 latency.

    Frozen objects are never collected, so a reference cycle among objects
    that were alive at a freeze (a request in flight at that moment) and
    died since would stay for good: the soak showed memory creeping up
    under connection churn.  So every ``sweep_interval`` seconds everything
    is unfrozen, collected once in full, and frozen again: one pause a
    minute (tens of milliseconds at 18,000 streams, the stream objects
    themselves hold no cycles) instead of a leak.
    """
    gc.collect()
    gc.freeze()
    last = [manager.connections_opened]
    loop = IOLoop.current()
    next_sweep = [loop.time() + sweep_interval]

    def freeze_new_streams() -> None:
        now = loop.time()
        if now >= next_sweep[0]:
            next_sweep[0] = now + sweep_interval
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        elif manager.connections_opened != last[0]:
            last[0] = manager.connections_opened
            gc.collect()
            gc.freeze()

    callback = PeriodicCallback(freeze_new_streams, 1000)
    callback.start()
    return callback


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# -- serving ------------------------------------------------------------------


def bind_listeners(config: Config, reuse_port: bool = False) -> list[socket.socket]:
    """The listening sockets for ``--address``/``--port``.

    The backlog is large because thousands of browsers reconnect at once
    after a restart.  :raises StartupError: the port is taken or forbidden.
    """
    try:
        return tornado.netutil.bind_sockets(config.port, config.address, backlog=8192, reuse_port=reuse_port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.address}:{config.port}: {exc.strerror}", exit_code=1) from None


async def serve(
    config: Config,
    sockets: list[socket.socket] | None = None,
    started: Callable[[Callable[[], None]], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully; :returns: exit code.

    :param sockets: listening sockets bound already (by the ``--processes``
        parent); by default they are bound here once the app has started.
    :param started: called once serving, with the function that begins the
        graceful shutdown (a ``--processes`` child reports to its parent).
    """
    app = make_app(config)
    await app.start()
    if sockets is None:
        try:
            sockets = bind_listeners(config)
        except StartupError:
            await app.stop()
            raise
    server = make_http_server(app)
    server.add_sockets(sockets)
    gc_callback = tune_gc(app.deps.manager)
    log.info(
        "serving on http://%s:%d (instance %s, database %s)",
        config.address,
        config.port,
        app.deps.instance_id,
        config.db_url.split("://", 1)[0],
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # `kill -USR1 <pid>` logs the connection state without a restart.
    loop.add_signal_handler(signal.SIGUSR1, app.deps.manager.log_state)
    if started is not None:
        started(stopping.set)
    await stopping.wait()
    log.info("shutting down: no new connections, ending streams")
    gc_callback.stop()
    ended = await app.stop(server)
    log.info("stopped (%d streams ended)", ended)
    return 0


def serve_processes(config: Config) -> int:
    """``--processes N``: N serving processes on one port, supervised; :returns: exit code.

    Everything a child shares with the others is settled here, before any
    fork: the flags are checked, the demo secret is generated once (so a
    token from one process is valid on all), and the listening sockets are
    bound.  Each child then builds its own app, loop, database connections
    and threads (see :mod:`core.runtime.supervisor`).

    :raises StartupError: without ``--redis-url`` (no process would see the
        others' publishes), over an in-memory database (each process would
        have its own), or when the port is taken.
    """
    if not config.redis_url:
        raise StartupError(
            f"--processes {config.processes} needs --redis-url: without it, a stream on one process "
            "would never see notifications published through another"
        )
    if is_memory(config.db_url):
        raise StartupError(
            f"--processes {config.processes} needs a database the processes share, not sqlite:///:memory:"
        )
    load_tokens(config)
    sockets = _bind_for_processes(config)
    log.info("starting %d processes on http://%s:%d", config.processes, config.address, config.port)

    def child(slot: int, link: ChildLink) -> int:
        try:
            return asyncio.run(serve(config, sockets[slot], started=link.serving))
        except StartupError as exc:
            print(f"server.py: error: {exc}", file=sys.stderr)
            return exc.exit_code

    return Supervisor(config.processes, child, sockets).run()


def _bind_for_processes(config: Config) -> list[list[socket.socket]]:
    """Listening sockets for each of ``config.processes`` children.

    With ``SO_REUSEPORT`` every child gets its own socket on the port and the
    kernel spreads new connections evenly over them (300 held open: 143/157
    to 149/151 over two processes).  With one shared socket, whichever
    process wakes first accepts, and the split was 62/238 to 110/190; SSE
    connections stay, so one process would fill its descriptors while the
    other still had room.  A plain bind first makes a port already in use
    (by anything, even another reuse-port group) a clear error instead of
    silently joining someone else's group.
    """
    for sock in bind_listeners(config):
        sock.close()
    if not hasattr(socket, "SO_REUSEPORT"):
        shared = bind_listeners(config)
        return [shared] * config.processes
    return [bind_listeners(config, reuse_port=True) for _ in range(config.processes)]


# -- command line ---------------------------------------------------------------


def _server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="Real-time notification server (Server-Sent Events). "
        "Subcommands: create-user USER_ID --password P [--role R]; issue-token USER_ID [--role R] [--ttl S].",
    )
    add_options(parser)
    return parser


def _create_user_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="server.py create-user", description="Create a local account.")
    parser.add_argument("user_id", metavar="USER_ID")
    parser.add_argument("--password", required=True)
    parser.add_argument("--role", choices=ROLES, default="user")
    add_options(parser)
    return parser


def _issue_token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="server.py issue-token", description="Print a signed JWT.")
    parser.add_argument("user_id", metavar="USER_ID")
    parser.add_argument("--role", choices=ROLES, default="user")
    parser.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default --token-ttl)")
    add_options(parser)
    return parser


async def _create_user(config: Config, user_id: str, password: str, role: str) -> None:
    runner = _open_runner(config)
    try:
        try:
            runner.run_sync(create_schema)
        except Exception as exc:
            raise StartupError(f"cannot open the database: {_first_line(exc)}", exit_code=1) from None
        passwords = PasswordPool(threads=1)
        try:
            service = NotificationService(runner, EventBus(), None, passwords=passwords)
            await service.create_user(check_user_id(user_id), password, role)
        finally:
            passwords.close()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, runner.close)


def main(argv: Sequence[str] | None = None, environ: Any = None) -> int:
    """Run the command line; :returns: the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    command = argv[0] if argv and argv[0] in ("create-user", "issue-token") else "serve"
    parser = {"create-user": _create_user_parser, "issue-token": _issue_token_parser, "serve": _server_parser}[
        command
    ]()
    args = parser.parse_args(argv[1:] if command != "serve" else argv)
    try:
        config = build_config(args, environ)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        # With several processes, say which one wrote each line.
        format="%(asctime)s %(levelname)s %(name)s"
        + ("[%(process)d]" if config.processes > 1 else "")
        + ": %(message)s",
        stream=sys.stderr,
    )
    try:
        if command == "issue-token":
            if not config.jwt_secret:
                raise StartupError("issue-token needs --jwt-secret (or NOTIFY_JWT_SECRET) to sign with")
            tokens = TokenService(config.jwt_secret, audience=config.jwt_audience, issuer=config.jwt_issuer)
            print(tokens.issue(args.user_id, args.role, args.ttl or config.token_ttl))
            return 0
        if command == "create-user":
            asyncio.run(_create_user(config, args.user_id, args.password, args.role))
            print(f"created {args.role} {args.user_id}")
            return 0
        if config.processes > 1:
            return serve_processes(config)
        return asyncio.run(serve(config))
    except StartupError as exc:
        print(f"server.py: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a domain error from create-user (user exists, ...)
        message = getattr(exc, "message", None)
        if message is None:
            raise
        print(f"server.py: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
