"""Shared fixtures: a real server on a real socket over a real database.

``server`` is the server with default settings; ``make_server(**settings)``
starts another with other settings (a short keep-alive, a device cap...).
Both run on the test's IOLoop, so tests talk to them over loopback with
:mod:`tests.support.sse`.

The database is a fresh SQLite file per server, or, with
``NOTIFY_TEST_DB=postgresql``, a fresh schema per server in the PostgreSQL
database ``NOTIFY_TEST_PG_URL`` (default the local ``test`` database).
``make test`` runs the suite once with each.

Two fixtures apply to every test: the whole run is watched for leaked
credentials (:mod:`tests.support.leaks`), and a test that made one leak
fails at its teardown with what leaked and where.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tornado.netutil

from core.domain.auth import TokenService
from core.runtime.config import Config
from core.transport.http1 import HTTP1Server
from server import NotifyApp, make_app, make_http_server
from tests.support import leaks
from tests.support.processes import need
from tests.support.redis_server import RedisServer
from tests.support.sse import SSEClient, http_json

SECRET = "test-secret-" + "x" * 20

#: The database servers under test use: "sqlite" (default) or "postgresql".
TEST_DB = os.environ.get("NOTIFY_TEST_DB", "sqlite").strip().lower()
#: The PostgreSQL database that holds one throw-away schema per server.
PG_URL = os.environ.get("NOTIFY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
if TEST_DB not in ("sqlite", "postgresql"):
    raise RuntimeError(f"NOTIFY_TEST_DB must be sqlite or postgresql, not {TEST_DB!r}")

#: Marks a test that checks something only SQLite has; skipped under PostgreSQL.
sqlite_only = pytest.mark.skipif(TEST_DB == "postgresql", reason="SQLite-specific behaviour")


def _pg_connect():
    """A psycopg2 connection (autocommit) to :data:`PG_URL`, for schema set-up."""
    import psycopg2

    parts = urllib.parse.urlparse(PG_URL)
    connection = psycopg2.connect(
        dbname=parts.path.lstrip("/") or "postgres",
        user=urllib.parse.unquote(parts.username or "") or None,
        password=urllib.parse.unquote(parts.password or "") or None,
        host=parts.hostname,
        port=parts.port,
        connect_timeout=5,
    )
    connection.autocommit = True
    return connection


def pytest_configure(config: pytest.Config) -> None:
    """Under ``NOTIFY_TEST_DB=postgresql``, stop early if PostgreSQL is not there.

    Locally the PostgreSQL pass is then skipped as a whole (exit 0 with the
    reason); under CI it is a failure, as for any missing service.
    """
    if TEST_DB != "postgresql":
        return
    reason = _pg_unreachable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.exit(reason, returncode=1)
        pytest.exit(f"skipping the PostgreSQL pass: {reason}", returncode=0)


def _pg_unreachable() -> str | None:
    """Why :data:`PG_URL` cannot be used, or None when it answers."""
    try:
        _pg_connect().close()
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is not reachable: {str(exc).strip().splitlines()[0]}"
    return None


@contextlib.contextmanager
def _pg_schemas() -> Iterator[Callable[[], str]]:
    """``create()`` -> the URL of a fresh schema in :data:`PG_URL`; all dropped at exit."""
    schemas: list[str] = []

    def create() -> str:
        # Unique across tests, runs and parallel CI jobs sharing the database.
        schema = f"t_{os.getpid()}_{secrets.token_hex(4)}"
        connection = _pg_connect()
        try:
            connection.cursor().execute(f'CREATE SCHEMA "{schema}"')
        finally:
            connection.close()
        schemas.append(schema)
        return f"{PG_URL}?options=-csearch_path%3D{schema}"

    try:
        yield create
    finally:
        if schemas:
            connection = _pg_connect()
            try:
                for schema in schemas:
                    connection.cursor().execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                connection.close()


def pytest_report_header(config: pytest.Config) -> str:
    """Say which database this run is for (the suite runs once per database)."""
    return f"database under test: {TEST_DB}" + (f" ({PG_URL}, a schema per server)" if TEST_DB == "postgresql" else "")


@pytest.fixture(scope="session", autouse=True)
def leak_scanner() -> Iterator[leaks.LeakScanner]:
    """Watch the whole run: no token, ticket, password or JWT secret in any log or answer.

    Every credential the run makes or sends is noted, and every log record,
    error body, ``/metrics``/stats/health body and kept server stderr is
    scanned as it appears (see :mod:`tests.support.leaks`).  Findings fail
    the test that caused them (:func:`no_credential_leaked`); any left over
    (from a module-scoped fixture's teardown) fail the run here.
    """
    scanner = leaks.LeakScanner()
    with leaks.watching(scanner):
        yield scanner
    left = scanner.leaks[scanner.reported :]
    assert not left, leaks.report(left)


@pytest.fixture(autouse=True)
def no_credential_leaked(leak_scanner: leaks.LeakScanner) -> Iterator[None]:
    """Fail this test if a credential leaked while it ran (set-up and teardown included)."""
    before = len(leak_scanner.leaks)
    yield
    found = leak_scanner.leaks[before:]
    leak_scanner.reported = len(leak_scanner.leaks)
    assert not found, leaks.report(found)


class Server:
    """A running server and helpers to talk to it."""

    def __init__(self, app: NotifyApp, port: int, secret: str) -> None:
        self.app = app
        self.host = "127.0.0.1"
        self.port = port
        # A verify-only server (public key, no secret) has nothing to sign
        # with: its tests sign their own tokens, and .token() is unavailable.
        # Signed for the server's --jwt-audience/--jwt-issuer, as its own are.
        config = app.config
        self.tokens = TokenService(secret, audience=config.jwt_audience, issuer=config.jwt_issuer) if secret else None

    @property
    def manager(self):
        """The server's SSE manager (for white-box checks of counters)."""
        return self.app.deps.manager

    @property
    def origin(self) -> str:
        """The ``Origin`` the server's own pages send (writes made with the cookie alone need it)."""
        return f"http://{self.host}:{self.port}"

    def token(self, user_id: str, role: str = "user", ttl: int = 600) -> str:
        """A valid JWT for ``user_id``."""
        return self.tokens.issue(user_id, role, ttl)

    def auth(self, user_id: str, role: str = "user", ttl: int = 600) -> dict[str, str]:
        """An Authorization header for ``user_id``."""
        return {"Authorization": "Bearer " + self.token(user_id, role, ttl)}

    async def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, as_user: str | None = None, role: str = "user"):
        """``(status, headers, json, raw)`` of one request, optionally authenticated."""
        merged = dict(self.auth(as_user, role)) if as_user else {}
        merged.update(headers or {})
        return await http_json(self.host, self.port, method, path, body=body, headers=merged)

    async def stream(self, user_id: str, headers: dict[str, str] | None = None, query: str = "", as_user: str | None = None, role: str = "user", auth: bool = True) -> SSEClient:
        """Open ``user_id``'s stream (as that user unless ``as_user``)."""
        merged = dict(self.auth(as_user or user_id, role)) if auth else {}
        merged.update(headers or {})
        path = f"/api/v1/users/{urllib.parse.quote(user_id, safe='')}/notifications/stream" + (f"?{query}" if query else "")
        return await SSEClient.connect(self.host, self.port, path, headers=merged)

    async def live_stream(self, user_id: str, **kwargs: Any) -> SSEClient:
        """Open a stream and wait for its ``ready`` event."""
        client = await self.stream(user_id, **kwargs)
        assert client.status == 200, client.body_bytes
        ready = await client.next_event()
        assert ready.type == "ready"
        return client

    async def notify(self, user_id: str, message: str = "hello", as_user: str | None = None, role: str = "user", **fields: Any):
        """Create a notification; :returns: its JSON (asserts 201)."""
        body = {"type": "info", "message": message, **fields}
        status, _, data, raw = await self.request("POST", f"/api/v1/users/{urllib.parse.quote(user_id, safe='')}/notifications", body, as_user=as_user or user_id, role=role)
        assert status == 201, raw
        return data


class _Starting:
    """What ``make_server`` returns inside a running test: ``await`` it."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start

    def __await__(self):
        return self._start().__await__()

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{name}: inside an async test write `server = await make_server(...)`")


@pytest.fixture
def new_db_url(tmp_path) -> Callable[[str], str]:
    """``new_db_url(name)``: the ``--db-url`` of a fresh, empty database.

    A SQLite file under ``tmp_path``, or, under ``NOTIFY_TEST_DB=postgresql``,
    a new schema selected through the URL's ``options=-csearch_path=...``
    (passed on to ``psycopg2.connect``), dropped with everything in it after
    the test.  Servers using it must be stopped before then (fixtures that
    depend on this one are torn down first).
    """
    with _pg_schemas() as new_schema:

        def create(name: str) -> str:
            if TEST_DB == "sqlite":
                return f"sqlite:///{tmp_path}/{name}.db"
            return new_schema()

        yield create


@pytest.fixture
def new_postgres_url() -> Callable[[str], str]:
    """``new_postgres_url(name)``: a fresh PostgreSQL schema, whatever ``NOTIFY_TEST_DB`` says.

    For tests that need the real thing in every pass (several server
    processes sharing one database).  Like :func:`new_db_url` otherwise;
    skipped when PostgreSQL does not answer (a failure under CI).
    """
    reason = _pg_unreachable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with _pg_schemas() as new_schema:
        yield lambda name: new_schema()


#: The two doors a request for a route can come through: the lane
#: (handlers/lane.py, what serves the routes) and Tornado's RequestHandlers
#: (handlers/tornado_door.py, what serves them when the lane is off).
DOORS = ("lane", "tornado")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests of a module that sets ``BOTH_DOORS = True`` once through each door.

    The way uvicorn runs its protocol tests over each protocol class: the
    API's behaviour is one implementation, and every test of it holds on
    both doors (servers started by ``make_server`` in such a test all use
    the same door).
    """
    if "door" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_DOORS", False):
        metafunc.parametrize("door", DOORS, indirect=True)


@pytest.fixture
def door(request) -> str:
    """The door ``make_server``'s servers serve the routes through (see :func:`pytest_generate_tests`)."""
    return getattr(request, "param", "lane")


@pytest.fixture
def make_server(io_loop, new_db_url, door) -> Callable[..., Server]:
    """Start servers with given settings; all are stopped after the test.

    In a fixture (loop not running) ``make_server(**settings)`` returns the
    running :class:`Server`; inside an async test, ``await make_server(...)``.
    Each server gets its own fresh database (see :func:`new_db_url`) unless
    ``db_url`` is given.
    """
    started: list[tuple[NotifyApp, HTTP1Server]] = []

    def build(settings: dict[str, Any]) -> NotifyApp:
        values = {
            "jwt_secret": SECRET,
            "keepalive_interval": 30.0,
        }
        values.update(settings)
        # ``lanes=`` chooses this server's door, whatever the test's ``door`` is.
        lanes = values.pop("lanes", door == "lane")
        if "db_url" not in values:
            values["db_url"] = new_db_url(f"notify-{len(started)}")
        return make_app(Config(**values), lanes=lanes)

    def listen(app: NotifyApp) -> Server:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        http_server = make_http_server(app)
        http_server.add_sockets(sockets)
        started.append((app, http_server))
        return Server(app, sockets[0].getsockname()[1], app.config.jwt_secret)

    def start(**settings: Any) -> Server | _Starting:
        app = build(settings)
        if io_loop.asyncio_loop.is_running():

            async def start_async() -> Server:
                await app.start()
                return listen(app)

            return _Starting(start_async)
        io_loop.run_sync(app.start)
        return listen(app)

    yield start
    for app, http_server in reversed(started):
        io_loop.run_sync(functools.partial(app.stop, http_server))


@pytest.fixture
def server(make_server) -> Server:
    """A server with default settings over a fresh database (SQLite file or PostgreSQL schema)."""
    return make_server()


@pytest.fixture
def no_error_logged(caplog):
    """Fail the test if serving it logged an error or a traceback.

    The contract: bad input (or a client dropping its connection) never
    yields a 500 or a traceback in the log.  API test modules apply it to
    every test with ``pytest.mark.usefixtures("no_error_logged")``.
    """
    caplog.set_level(logging.WARNING)
    yield
    failures = [record for record in caplog.get_records("call") if record.levelno >= logging.ERROR or record.exc_info]
    assert not failures, [record.getMessage() for record in failures]


@pytest.fixture
def redis_server(tmp_path):
    """A real ``redis-server`` on a free port, stopped after the test.

    Tests stop and restart it (same port) to simulate an outage.  Skipped
    when ``redis-server`` is not installed (a failure under CI).
    """
    directory = tmp_path / "redis"
    directory.mkdir()
    redis = RedisServer(need("redis-server"), str(directory))
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def redis(tmp_path_factory) -> Iterator[RedisServer]:
    """One real ``redis-server`` shared by a module's tests (not restarted)."""
    server = RedisServer(need("redis-server"), str(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()
