"""The command line, run for real: ``python server.py ...`` in a subprocess.

Each test starts the product the way an operator does (``sys.executable
server.py`` from the repository root, with every ``NOTIFY_*`` variable of
the test runner's environment removed), talks to it over loopback with the
standard library, and checks the exit status, stdout and stderr.  Servers
write their logs to files under ``tmp_path`` and are always killed at the
end, whatever happened.  Start-up is awaited by polling ``/health`` with a
bounded retry loop (there is no other signal that a subprocess is ready).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import jwt
import pytest

from tests.support import leaks
from tests.support.sse import ChunkedDecoder

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "cli-test-secret-" + "k" * 24
#: Seconds a server may take to answer /health after it was started.
START_TIMEOUT = 10.0
#: Seconds the contract allows for a graceful shutdown.
SHUTDOWN_LIMIT = 10.0


# -- processes -------------------------------------------------------------------------


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any ``NOTIFY_*``, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(variables)
    return env


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``address`` right now."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def assert_refused(host: str, port: int) -> None:
    """Assert that nothing listens on ``host:port``."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()


def sqlite_url(tmp_path: Path, name: str = "notify.db") -> str:
    """A ``--db-url`` for a fresh SQLite file under ``tmp_path``."""
    return f"sqlite:///{tmp_path / name}"


@dataclasses.dataclass
class Finished:
    """A command that ran to its end."""

    returncode: int
    stdout: str
    stderr: str


def run(args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 15) -> Finished:
    """Run ``python server.py *args`` to completion (killed after ``timeout``).

    Its stderr is scanned for the credentials of the run (stdout is where
    ``issue-token`` prints its token on purpose).
    """
    leaks.note_argv(args, env)
    done = subprocess.run(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    leaks.observe(done.stderr, f"stderr of server.py {args[0] if args else ''}")
    return Finished(done.returncode, done.stdout, done.stderr)


def assert_clean_failure(result: Finished, fragment: str, returncode: int | None = None) -> str:
    """Assert a refused start: non-zero exit, no traceback, an error line with ``fragment``.

    :returns: the error line.
    """
    assert result.returncode != 0, result
    if returncode is not None:
        assert result.returncode == returncode, result
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("server.py: error: "), result.stderr
    assert fragment in last, result.stderr
    return last


@dataclasses.dataclass
class ServerProcess:
    """A server running in a subprocess, and where its output goes."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        """``(status, parsed JSON body or None)`` of one request."""
        return http_request(self.host, self.port, method, path, body, token)

    def login(self, user_id: str, password: str) -> tuple[int, Any]:
        """``POST /api/v1/auth/login``."""
        return self.request("POST", "/api/v1/auth/login", {"userId": user_id, "password": password})


def http_request(host: str, port: int, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 5) -> tuple[int, Any]:
    """One HTTP request on a fresh connection: ``(status, JSON body or None)``."""
    headers = {"Accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    leaks.observe_exchange(method, path, headers, body, response.status, raw)
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, None


def wait_healthy(process: subprocess.Popen[bytes], host: str, port: int, log_path: Path) -> None:
    """Poll ``/health`` until it answers 200; fail if the process dies or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} before serving:\n{log_path.read_text()}")
        try:
            status, body = http_request(host, port, "GET", "/health", timeout=1)
        except OSError:
            status, body = None, None
        if status == 200:
            assert body["status"] == "ok"
            return
        if time.monotonic() > deadline:
            pytest.fail(f"server did not become healthy on {host}:{port} (last status {status}):\n{log_path.read_text()}")
        time.sleep(0.05)


@contextlib.contextmanager
def serving(tmp_path: Path, args: Sequence[str], host: str = "127.0.0.1", port: int | None = None, env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """Start ``python server.py *args``, wait until it is healthy, kill it at the end.

    :param port: where to poll; ``None`` picks a free port and passes it as
        ``--port`` (give one when ``args`` or ``env`` choose it).
    """
    if port is None:
        port = free_port(host)
        args = [*args, "--port", str(port)]
    log_path = tmp_path / f"server-{port}.log"
    leaks.note_argv(args, env)
    with open(log_path, "wb") as stderr, open(tmp_path / f"server-{port}.out", "wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "server.py", *args],
            cwd=ROOT,
            env=dict(env) if env is not None else clean_env(),
            stdout=stdout,
            stderr=stderr,
        )
    try:
        wait_healthy(process, host, port, log_path)
        yield ServerProcess(process, host, port, log_path)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        leaks.observe_file(log_path, f"stderr of the server on port {port}")


def secret_server_args(tmp_path: Path, *extra: str) -> list[str]:
    """Flags for a server with the test secret over a SQLite file in ``tmp_path``."""
    return ["--jwt-secret", SECRET, "--db-url", sqlite_url(tmp_path), *extra]


def signs(token: str, secret: str) -> bool:
    """Whether ``secret`` is the HS256 key ``token`` was signed with."""
    signing_input, _, signature = token.rpartition(".")
    digest = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(base64.urlsafe_b64encode(digest).rstrip(b"=").decode(), signature)


def token_for(user_id: str, role: str = "user", secret: str = SECRET) -> str:
    """A JWT signed as an external identity provider would sign it."""
    return jwt.encode({"sub": user_id, "role": role, "exp": int(time.time()) + 600}, secret, algorithm="HS256")


# -- serving: flags and environment -------------------------------------------------------


def test_port_and_address_flags_choose_where_it_serves(tmp_path):
    address = "127.0.0.2"
    port = free_port(address)
    args = secret_server_args(tmp_path, "--address", address, "--port", str(port))
    with serving(tmp_path, args, host=address, port=port):
        # Bound to that address only: the same port on 127.0.0.1 is closed.
        assert_refused("127.0.0.1", port)


def test_notify_environment_variables_configure_the_server(tmp_path):
    port = free_port()
    env = clean_env(NOTIFY_PORT=str(port), NOTIFY_JWT_SECRET=SECRET, NOTIFY_DB_URL=sqlite_url(tmp_path))
    with serving(tmp_path, [], port=port, env=env) as server:
        status, body = server.request("GET", "/api/v1/users/alice/notifications/unread-count", token=token_for("alice"))
        assert (status, body) == (200, {"unreadCount": 0})


def test_port_flag_wins_over_environment(tmp_path):
    port, env_port = free_port(), free_port()
    env = clean_env(NOTIFY_PORT=str(env_port))
    with serving(tmp_path, secret_server_args(tmp_path, "--port", str(port)), port=port, env=env):
        assert_refused("127.0.0.1", env_port)


# -- refusing to start --------------------------------------------------------------------


def test_no_jwt_key_exits_with_one_clear_error_line(tmp_path):
    result = run(["--db-url", sqlite_url(tmp_path)])
    assert_clean_failure(result, "no JWT key")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--jwt-secret" in result.stderr and "--demo" in result.stderr


def test_bad_flag_value_is_a_usage_error_with_status_2():
    result = run(["--port", "abc"])
    assert_clean_failure(result, "argument --port", returncode=2)
    assert result.stderr.startswith("usage: server.py")


def test_bad_environment_value_is_a_usage_error_with_status_2():
    result = run([], env=clean_env(NOTIFY_PORT="abc"))
    assert_clean_failure(result, "NOTIFY_PORT", returncode=2)


def test_unreachable_database_exits_with_a_clear_error(tmp_path):
    result = run(["--jwt-secret", SECRET, "--port", str(free_port()), "--db-url", "postgresql://nobody@127.0.0.1:1/x"])
    assert_clean_failure(result, "cannot open the database")


def test_port_in_use_exits_with_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(secret_server_args(tmp_path, "--port", str(port)))
    assert_clean_failure(result, f"cannot listen on 127.0.0.1:{port}")


# -- demo mode --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """One ``--demo`` server (no key given) shared by the demo tests."""
    tmp_path = tmp_path_factory.mktemp("demo")
    with serving(tmp_path, ["--demo", "--db-url", sqlite_url(tmp_path)]) as server:
        yield server


def test_demo_says_in_its_log_that_it_uses_a_generated_secret(demo_server):
    log = demo_server.log().lower()
    assert "demo" in log and "generated" in log and "secret" in log


def test_demo_log_does_not_contain_the_secret(demo_server):
    status, body = demo_server.login("empresaabc_123", "demo")
    assert status == 200
    assert signs(token_for("x"), SECRET)  # the oracle itself works
    # Whatever the generated secret is, it signs this token: no word of the
    # log may verify it.
    candidates = set(re.findall(r"[A-Za-z0-9_\-+/=.]{8,}", demo_server.log()))
    assert candidates
    signed = [word for word in candidates if signs(body["token"], word)]
    assert signed == []


@pytest.mark.parametrize("user_id, role", [("empresaabc_123", "user"), ("empresaxyz_456", "user"), ("empresadef_789", "user"), ("demo_publisher", "publisher")])
def test_demo_users_log_in_with_password_demo(demo_server, user_id, role):
    status, body = demo_server.login(user_id, "demo")
    assert status == 200, body
    assert (body["userId"], body["role"], body["tokenType"]) == (user_id, role, "Bearer")
    # The token is signed with the generated secret the server verifies with.
    status, count = demo_server.request("GET", f"/api/v1/users/{user_id}/notifications/unread-count", token=body["token"])
    assert (status, count) == (200, {"unreadCount": 0})


def test_demo_rejects_a_wrong_password(demo_server):
    status, body = demo_server.login("empresaabc_123", "not-demo")
    assert status == 401
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)


# -- create-user and issue-token ----------------------------------------------------------------


def create_user(db_url: str, user_id: str, password: str, role: str) -> Finished:
    """Run ``server.py create-user``."""
    return run(["create-user", user_id, "--password", password, "--role", role, "--db-url", db_url])


def test_created_user_logs_in_with_its_role(tmp_path):
    db_url = sqlite_url(tmp_path)
    result = create_user(db_url, "alice", "pw", "publisher")
    assert result.returncode == 0, result.stderr
    assert "alice" in result.stdout
    with serving(tmp_path, ["--jwt-secret", SECRET, "--db-url", db_url]) as server:
        status, body = server.login("alice", "pw")
    assert status == 200, body
    assert (body["userId"], body["role"]) == ("alice", "publisher")
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("alice", "publisher")


def test_create_user_twice_fails_with_a_clear_error(tmp_path):
    db_url = sqlite_url(tmp_path)
    assert create_user(db_url, "alice", "pw", "user").returncode == 0
    result = create_user(db_url, "alice", "other", "admin")
    assert_clean_failure(result, "alice")
    assert "exists" in result.stderr


def test_issue_token_prints_a_jwt_with_sub_role_and_ttl():
    before = time.time()
    result = run(["issue-token", "bob", "--role", "admin", "--ttl", "60", "--jwt-secret", SECRET])
    after = time.time()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [token] = result.stdout.split()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("bob", "admin")
    assert int(before) + 60 <= claims["exp"] <= int(after) + 61


def test_issue_token_carries_the_configured_audience_and_issuer():
    result = run(["issue-token", "bob", "--jwt-secret", SECRET, "--jwt-audience", "notify-api",
                  "--jwt-issuer", "https://id.example"])
    assert result.returncode == 0, result.stderr
    [token] = result.stdout.split()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="notify-api", issuer="https://id.example")
    assert (claims["aud"], claims["iss"]) == ("notify-api", "https://id.example")


def test_issue_token_without_secret_fails_with_a_clear_error():
    assert_clean_failure(run(["issue-token", "bob"]), "--jwt-secret")


# -- graceful shutdown --------------------------------------------------------------------------


def open_stream(host: str, port: int, user_id: str) -> tuple[socket.socket, bytes]:
    """Open ``user_id``'s stream on a raw socket and read until its ``ready`` event.

    :returns: the socket and everything read so far (headers included).
    """
    sock = socket.create_connection((host, port), timeout=5)
    request = (
        f"GET /api/v1/users/{user_id}/notifications/stream HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {token_for(user_id)}\r\n\r\n"
    )
    sock.sendall(request.encode())
    received = b""
    while b"event: ready" not in received:
        data = sock.recv(65536)
        assert data, f"stream closed before ready: {received!r}"
        received += data
    return sock, received


def read_to_end(sock: socket.socket, received: bytes, decoder: ChunkedDecoder) -> bytes:
    """Read the rest of a chunked response until its terminator or EOF.

    :returns: every byte of the body received (framing included).
    """
    head, _, body = received.partition(b"\r\n\r\n")
    decoder.feed(body)
    sock.settimeout(SHUTDOWN_LIMIT)
    while not decoder.finished:
        data = sock.recv(65536)
        if not data:
            break
        body += data
        decoder.feed(data)
    return body


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_ends_open_stream_with_terminator_and_exits_0(tmp_path, signum):
    with serving(tmp_path, secret_server_args(tmp_path)) as server:
        sock, received = open_stream(server.host, server.port, "alice")
        with sock:
            head = received.partition(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 200")
            assert b"transfer-encoding: chunked" in head
            signalled = time.monotonic()
            server.process.send_signal(signum)
            decoder = ChunkedDecoder()
            body = read_to_end(sock, received, decoder)
        assert decoder.finished, body[-200:]
        assert body.endswith(b"0\r\n\r\n")
        returncode = server.process.wait(timeout=SHUTDOWN_LIMIT)
        assert time.monotonic() - signalled < SHUTDOWN_LIMIT
        assert returncode == 0
        assert "Traceback" not in server.log(), server.log()
