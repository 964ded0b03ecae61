"""The command line, run for real: ``python server.py ...`` in a subprocess.

Each test starts the product the way an operator does (``sys.executable
server.py`` from the repository root, with every ``NOTIFY_*`` variable of
the test runner's environment removed), talks to it over loopback with the
standard library, and checks the exit status, stdout and stderr.  Servers
write their logs to files under ``tmp_path`` and are always killed at the
end, whatever happened.  Start-up is awaited by polling ``/health`` with a
bounded retry loop (there is no other signal that a subprocess is ready).
How a server is started and reached is :mod:`tests.support.processes`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from tests.support.processes import (
    SECRET,
    SHUTDOWN_LIMIT,
    Finished,
    ServerProcess,
    assert_clean_failure,
    clean_env,
    free_port,
    run,
    serving,
    sqlite_url,
    token_for,
)
from tests.support.sse import ChunkedDecoder

pytestmark = [pytest.mark.timeout(30), pytest.mark.slow]


def assert_refused(host: str, port: int) -> None:
    """Assert that nothing listens on ``host:port``."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()


def secret_server_args(tmp_path: Path, *extra: str) -> list[str]:
    """Flags for a server with the test secret over a SQLite file in ``tmp_path``."""
    return ["--jwt-secret", SECRET, "--db-url", sqlite_url(tmp_path), *extra]


def signs(token: str, secret: str) -> bool:
    """Whether ``secret`` is the HS256 key ``token`` was signed with."""
    signing_input, _, signature = token.rpartition(".")
    digest = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(base64.urlsafe_b64encode(digest).rstrip(b"=").decode(), signature)


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
    _head, _, body = received.partition(b"\r\n\r\n")
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
