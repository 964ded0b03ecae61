"""``deploy/nginx.conf`` in front of two real servers, run for real.

Each test starts two ``server.py`` processes (one Redis, one database: a
SQLite file, or a PostgreSQL schema in the PostgreSQL pass) and Debian's
nginx with the checked-in ``deploy/nginx.conf``, whose two backend ports and
listen port are replaced by free ones (the file says which three values).
nginx runs in the foreground with everything (pid, logs, temp files) under
the test's temporary directory.  Tests then talk to nginx only, and check
what SSE needs from a proxy: no buffering (an event and a ``: ping`` arrive
while the connection stays open), the stream's headers and chunked framing,
JSON errors untouched, the browser's Host passed on with its port (so a
cookie write from the page nginx serves is the server's own origin),
streams spread over both backends, and a backend that stops ending its
streams cleanly so the reconnect resumes on the other.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import leaks
from tests.support.blocking_sse import BlockingStream
from tests.support.processes import ROOT, SECRET, SHUTDOWN_LIMIT, free_port, need, serving, token_for, wait_for

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

CONF = ROOT / "deploy" / "nginx.conf"
#: The values of deploy/nginx.conf a test replaces with its own ports (and log).
BACKEND_A, BACKEND_B, LISTEN = "server 127.0.0.1:8001 ", "server 127.0.0.1:8002 ", "listen 8080;"
ACCESS_LOG = "access_log /var/log/nginx/notify-access.log notify_no_query;"
#: Seconds between ": ping" comments on the backends (short, to see them pass).
KEEPALIVE = 0.3
#: How long a proxied event may take: far below any buffer-flush timeout,
#: far above loopback latency.
PROMPTLY = 2.0


def nginx_config(tmp_path: Path, listen: int, backend_a: int, backend_b: int) -> Path:
    """A main config that includes deploy/nginx.conf with the test's ports.

    :returns: the main config's path.
    """
    text = CONF.read_text()
    replacements = (
        (BACKEND_A, f"server 127.0.0.1:{backend_a} "),
        (BACKEND_B, f"server 127.0.0.1:{backend_b} "),
        (LISTEN, f"listen 127.0.0.1:{listen};"),
        (ACCESS_LOG, f"access_log {tmp_path / 'notify-access.log'} notify_no_query;"),
    )
    for old, new in replacements:
        # Exactly once: a changed deploy/nginx.conf must not silently keep
        # pointing at ports nobody listens on.
        assert text.count(old) == 1, f"deploy/nginx.conf should contain {old!r} once"
        text = text.replace(old, new)
    site = tmp_path / "notify.conf"
    site.write_text(text)
    temp = {name: tmp_path / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = tmp_path / "nginx.conf"
    main.write_text(
        # As root, workers would switch to an unprivileged user that cannot
        # enter the test's private temporary directory.
        ("user root;\n" if os.geteuid() == 0 else "")
        + "worker_processes 1;\n"  # one worker: least_conn sees every open stream
        + "events { worker_connections 512; }\n"
        + "http {\n"
        + f"    access_log {tmp_path / 'access.log'};\n"
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
        + f"    include {site};\n"
        + "}\n"
    )
    return main


@contextlib.contextmanager
def running_nginx(tmp_path: Path, listen: int, backend_a: int, backend_b: int) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground under ``tmp_path``; stopped at the end."""
    executable = need("nginx")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    main = nginx_config(prefix, listen, backend_a, backend_b)
    error_log = prefix / "error.log"
    with open(prefix / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [executable, "-p", str(prefix), "-c", str(main), "-e", str(error_log),
             "-g", f"daemon off; pid {prefix / 'nginx.pid'}; error_log {error_log};"],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        # Nothing says "listening" but the port itself: poll it, bounded.
        def listening() -> bool:
            if process.poll() is not None:
                logs = [path.read_text(errors="replace") for path in (prefix / "stderr.log", error_log) if path.exists()]
                pytest.fail(f"nginx exited with {process.returncode}: {' '.join(logs)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", listen), timeout=1):
                return True
            return False

        wait_for(listening, 10, "nginx to listen")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # nginx's logs are logs of the service too: no credential in them.
        for log in (prefix / "notify-access.log", error_log):
            leaks.observe_file(log, f"nginx {log.name}")


class Proxied:
    """nginx on :attr:`port` in front of two servers (:attr:`backends`)."""

    def __init__(self, port: int, backends: list[Any]) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.backends = backends

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """``(status, lower-case headers, raw body)`` of one request through nginx (plus ``extra`` headers)."""
        headers = {"Accept": "application/json", **(extra or {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            connection.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def notify(self, user_id: str, message: str) -> dict[str, Any]:
        """Create a notification through nginx; :returns: it (asserts 201)."""
        status, _, raw = self.request("POST", f"/api/v1/users/{user_id}/notifications", {"type": "info", "message": message}, token_for(user_id))
        assert status == 201, raw
        return json.loads(raw)

    def stream(self, user_id: str, headers: dict[str, str] | None = None) -> BlockingStream:
        """Open ``user_id``'s stream through nginx, as a browser would (which accepts gzip)."""
        merged = {"Authorization": f"Bearer {token_for(user_id)}", "Accept-Encoding": "gzip, deflate", **(headers or {})}
        return BlockingStream(self.host, self.port, f"/api/v1/users/{user_id}/notifications/stream", merged)

    def backend_of(self, instance_id: str) -> Any:
        """The backend process whose instance id is ``instance_id``."""
        for backend in self.backends:
            if backend.request("GET", "/api/v1/stats")[1]["instanceId"] == instance_id:
                return backend
        raise AssertionError(f"no backend is {instance_id}")


@pytest.fixture
def proxied(tmp_path, redis, new_db_url) -> Iterator[Proxied]:
    """Two servers sharing one database and Redis, behind deploy/nginx.conf."""
    need("nginx")
    args = ["--jwt-secret", SECRET, "--redis-url", redis.url, "--db-url", new_db_url("shared"),
            "--keepalive-interval", str(KEEPALIVE)]
    with contextlib.ExitStack() as stack:
        # One after the other: the second finds the schema made by the first.
        backends = [stack.enter_context(serving(tmp_path, args)) for _ in range(2)]
        listen = free_port()
        stack.enter_context(running_nginx(tmp_path, listen, backends[0].port, backends[1].port))
        yield Proxied(listen, backends)


# -- no buffering ----------------------------------------------------------------------


def test_a_stream_through_nginx_gets_its_notification_at_once(proxied):
    with proxied.stream("alice") as stream:
        assert stream.status == 200, stream.raw_body
        stream.ready(timeout=PROMPTLY)
        created = proxied.notify("alice", "through the proxy")
        event = stream.next_event(timeout=PROMPTLY)
        assert (event.type, event.json()) == ("message", created)


def test_pings_come_through_nginx_as_they_are_sent(proxied):
    with proxied.stream("alice") as stream:
        stream.ready(timeout=PROMPTLY)
        stream.wait_comment("ping", timeout=PROMPTLY)


def test_a_stream_through_nginx_keeps_its_headers_and_chunked_framing(proxied):
    with proxied.stream("alice") as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        directives = {part.strip().lower() for part in stream.headers["cache-control"].split(",")}
        assert directives & {"no-cache", "no-store"}, stream.headers
        assert stream.chunked, stream.headers
        # A compressor would hold events back to fill its buffers.
        assert "content-encoding" not in stream.headers, stream.headers
        stream.wait_comment("connected", timeout=PROMPTLY)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/api/v1/users/alice/notifications/stream", 401), ("GET", "/no/such/path", 404),
     ("POST", "/api/v1/users/alice/notifications", 401)],
    ids=["stream-401", "unknown-404", "api-401"],
)
def test_json_errors_pass_through_nginx_unchanged(proxied, method, path, status):
    got, headers, raw = proxied.request(method, path, {} if method == "POST" else None)
    assert got == status, raw
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(raw)["error"]
    assert set(error) == {"code", "message"} and error["code"]


def test_requests_the_backends_refuse_never_make_nginx_answer_502_to_good_ones(proxied):
    # A request the backend refuses must get its answer, not a dropped
    # connection: nginx counts a dropped connection as a failed backend
    # (max_fails=1) and, with both marked down, answers 502 to everyone.
    refused = "/api/v1/stats?" + "&".join(f"f{i}=1" for i in range(1001))
    bad, good = [], []
    for _ in range(20):
        bad.append(proxied.request("GET", refused)[0])
        good.extend(proxied.request("GET", path)[0] for path in ("/health", "/api/v1/stats"))
    assert set(bad) == {400}, bad
    assert set(good) == {200}, good


@pytest.mark.parametrize(("page", "status"), [("served through nginx", 200), ("foreign", 403)])
def test_a_cookie_write_is_accepted_from_the_page_nginx_serves_and_refused_from_another(proxied, page, status):
    # nginx passes the Host the browser sent, port included ($http_host),
    # so the Origin of a page it serves names the Host the server sees.
    origin = f"http://{proxied.host}:{proxied.port}" if page == "served through nginx" else "https://evil.example"
    got, _, raw = proxied.request("POST", "/api/v1/auth/stream-ticket",
                                  extra={"Cookie": f"access_token={token_for('alice')}", "Origin": origin})
    assert got == status, raw


# -- two backends --------------------------------------------------------------------------


def test_nginx_spreads_open_streams_over_both_backends(proxied):
    streams = [proxied.stream("alice") for _ in range(4)]
    try:
        instances = [stream.ready(timeout=PROMPTLY)["instanceId"] for stream in streams]
        # least_conn: each new stream goes to the backend with fewer open.
        assert sorted(instances.count(instance) for instance in set(instances)) == [2, 2], instances
    finally:
        for stream in streams:
            stream.close()


def test_a_stopping_backend_ends_its_streams_cleanly_and_the_reconnect_resumes_on_the_other(proxied):
    stream = proxied.stream("alice")
    first = stream.ready(timeout=PROMPTLY)["instanceId"]
    before = proxied.notify("alice", "before the restart")
    seen = stream.next_event(timeout=PROMPTLY)
    assert seen.json() == before
    stopping = proxied.backend_of(first)
    stopping.process.send_signal(signal.SIGTERM)
    # Through nginx too, the stream ends with the chunked terminator, which
    # is what makes a browser reconnect rather than report an error.
    assert stream.read_to_end(timeout=SHUTDOWN_LIMIT), stream.raw_body[-200:]
    stream.close()
    assert stopping.process.wait(timeout=SHUTDOWN_LIMIT) == 0
    missed = proxied.notify("alice", "while reconnecting")
    with proxied.stream("alice", {"Last-Event-ID": seen.id}) as resumed:
        assert resumed.ready(timeout=PROMPTLY)["instanceId"] != first
        event = resumed.next_event(timeout=PROMPTLY)
        assert event.json() == missed
        assert int(event.id) > int(seen.id)


# -- credentials in URLs -------------------------------------------------------------------


def test_nginx_access_log_has_the_stream_path_without_query_credentials(proxied, tmp_path):
    token = token_for("alice")
    path = "/api/v1/users/alice/notifications/stream?" + urllib.parse.urlencode({"token": token})
    with BlockingStream(proxied.host, proxied.port, path) as stream:
        assert stream.status == 200, stream.raw_body
        stream.ready(timeout=PROMPTLY)
    refused = "/api/v1/users/alice/notifications/stream?" + urllib.parse.urlencode({"ticket": "not-a-real-ticket-0123456789"})
    status, _, _ = proxied.request("GET", refused)
    assert status == 401
    log = tmp_path / "nginx" / "notify-access.log"
    # nginx writes a request's line when it ends; the stream ended above.
    wait_for(lambda: log.read_text().count("/notifications/stream") >= 2, PROMPTLY, lambda: f"both lines in {log.read_text()}")
    text = log.read_text()
    assert '"GET /api/v1/users/alice/notifications/stream HTTP/1.1" 200' in text, text
    assert '"GET /api/v1/users/alice/notifications/stream HTTP/1.1" 401' in text, text
    assert token.rsplit(".", 1)[1] not in text and "not-a-real-ticket" not in text and "?" not in text, text
