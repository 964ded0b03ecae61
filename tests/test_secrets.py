"""Secrets never leak: no token, ticket, password or JWT secret in a log or an answer.

Two halves.  The run-wide guard (:mod:`tests.support.leaks`, wired in
``conftest.py``) scans every log record, error body and monitoring answer
of the whole suite; the first tests here prove that it is wired and that it
does fail when a credential shows up (a leak is planted in a scanner of the
test's own, so the run's stays clean).  The others check the places a
credential would most likely slip out, one by one: the access line and the
error body of a refused ``?token=``, a failed login, a server error, and the
public monitoring answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse

import pytest

from tests.conftest import SECRET
from tests.support import leaks
from tests.support.checks import assert_error
from tests.support.sse import http_json

pytestmark = pytest.mark.timeout(30)

PASSWORD = "tr0ub4dor&3-is-the-password"
LOGIN = "/api/v1/auth/login"


def signature(token: str) -> str:
    """The signature segment of a JWT: the part that makes it a credential."""
    return token.rsplit(".", 1)[1]


def stream_path(user_id: str, **query: str) -> str:
    """The stream path of ``user_id``, with a query string."""
    path = f"/api/v1/users/{urllib.parse.quote(user_id, safe='')}/notifications/stream"
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record, message and traceback."""
    formatter = logging.Formatter()
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
    return "\n".join(parts)


def access_lines(caplog: pytest.LogCaptureFixture, path: str) -> list[str]:
    """The access-log lines written for ``path``."""
    return [record.getMessage() for record in caplog.records if record.name == "notify.access" and path in record.getMessage()]


# -- the scanner itself -----------------------------------------------------------------


def test_scanner_finds_a_noted_secret_at_the_start_middle_and_end_of_a_text():
    scanner = leaks.LeakScanner()
    scanner.add_secret("s3cr3t-value-123", "password")
    for text in ("s3cr3t-value-123 at the start", "in the s3cr3t-value-123 middle", "at the end: s3cr3t-value-123"):
        found = scanner.scan(text, "a synthetic line")
        assert [(leak.kind, leak.where) for leak in found] == [("password", "a synthetic line")]
        assert "s3cr3t-value-123" not in found[0].excerpt, "the report must not repeat the secret"
    assert scanner.scan("s3cr3t-value-12 is one character short", "a synthetic line") == []


def test_scanner_takes_a_jwts_signature_as_the_secret_not_its_public_header():
    scanner = leaks.LeakScanner()
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1oZXJl"
    scanner.add_token(token)
    # Header and claims are base64 of public facts: no credential without the signature.
    assert scanner.scan("header and claims eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.", "line") == []
    assert [leak.kind for leak in scanner.scan(f"Bearer {token}", "line")] == ["jwt signature"]
    assert [leak.kind for leak in scanner.scan("sig=c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1oZXJl", "line")] == ["jwt signature"]


def test_scanner_ignores_values_too_short_to_tell_from_ordinary_text():
    scanner = leaks.LeakScanner()
    scanner.add_secret("demo", "password")
    assert scanner.secret_count == 0
    assert scanner.scan("demo mode: using a generated development JWT secret", "line") == []


async def test_a_token_planted_in_a_log_record_is_caught(server):
    probe = leaks.LeakScanner()
    with leaks.watching(probe):
        # Issued by the server's own token service: the wiring notes it.
        token = server.token("alice")
        try:
            raise ValueError(f"verification failed for {token}")
        except ValueError:
            logging.getLogger("notify.http").warning("refused %s", token[:10], exc_info=True)
    assert [(leak.kind, leak.where) for leak in probe.leaks] == [("jwt signature", "log record notify.http WARNING")]


async def test_a_credential_planted_in_an_error_body_is_caught(server):
    probe = leaks.LeakScanner()

    async def leaky_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps({"error": {"code": "invalid_ticket", "message": f"ticket {ticket} is used"}}).encode()
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(leaky_answer, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with leaks.watching(probe):
            status, _, body, _ = await server.request("POST", "/api/v1/auth/stream-ticket", as_user="alice")
            assert status == 200
            ticket = body["ticket"]
            status, _, _, _ = await http_json("127.0.0.1", port, "GET", "/anything")
    finally:
        listener.close()
        await listener.wait_closed()
    assert status == 401
    assert [(leak.kind, leak.where) for leak in probe.leaks] == [("stream ticket", "error body 401 GET /anything")]


def test_a_secret_planted_in_a_server_log_file_is_caught(tmp_path):
    probe = leaks.LeakScanner()
    log = tmp_path / "server.log"
    log.write_text("INFO serving\nWARNING secret is hunter2-but-longer\n")
    with leaks.watching(probe):
        leaks.note_argv(["--port", "1", "--jwt-secret", "hunter2-but-longer"])
        leaks.observe_file(log, "stderr of a server")
    assert [(leak.kind, leak.where) for leak in probe.leaks] == [("jwt secret", "stderr of a server")]


async def test_the_whole_run_is_watched(server, leak_scanner):
    token = server.token("alice")
    await server.app.service.create_user("carol", PASSWORD)
    status, _, _, _ = await server.request("POST", LOGIN, {"userId": "carol", "password": PASSWORD + "-wrong"})
    assert status == 401
    status, _, body, _ = await server.request("POST", "/api/v1/auth/stream-ticket", as_user="alice")
    assert status == 200
    assert leak_scanner.knows(SECRET)
    assert leak_scanner.knows(signature(token))
    assert leak_scanner.knows(PASSWORD) and leak_scanner.knows(PASSWORD + "-wrong")
    assert leak_scanner.knows(body["ticket"])
    before = leak_scanner.scanned
    status, _, _, _ = await server.request("GET", "/api/v1/users/alice/notifications", headers={"Authorization": "Bearer not-a-token-at-all"})
    assert status == 401
    # At least the error body and the access line of that request.
    assert leak_scanner.scanned >= before + 2
    assert leak_scanner.knows("not-a-token-at-all")


# -- where a credential would slip out ------------------------------------------------


async def test_a_refused_query_token_is_neither_in_the_error_body_nor_in_the_access_line(server, caplog):
    caplog.set_level(logging.DEBUG)
    expired = server.token("alice", ttl=-10)
    valid = server.token("alice")
    cases = [(expired, "alice", 401), (valid, "bob", 403)]
    for token, owner, expected in cases:
        path = stream_path(owner, token=token)
        status, headers, body, raw = await http_json(server.host, server.port, "GET", path)
        assert_error((status, headers, body, raw), expected)
        assert signature(token).encode() not in raw
        [line] = access_lines(caplog, f"/api/v1/users/{owner}/notifications/stream")[-1:]
        assert line.startswith(f"{expected} GET "), line
        assert signature(token) not in line and "token=" not in line
    text = logged(caplog)
    for token, _, _ in cases:
        assert signature(token) not in text


async def test_a_wrong_password_is_neither_logged_nor_answered(server, caplog):
    caplog.set_level(logging.DEBUG)
    await server.app.service.create_user("carol", PASSWORD)
    wrong = "n0t-" + PASSWORD
    for user_id in ("carol", "nobody_here"):
        status, headers, body, raw = await server.request("POST", LOGIN, {"userId": user_id, "password": wrong})
        assert_error((status, headers, body, raw), 401, "invalid_credentials")
        assert wrong.encode() not in raw and PASSWORD.encode() not in raw
    assert access_lines(caplog, LOGIN), "the failed logins left no access line to inspect"
    text = logged(caplog)
    assert wrong not in text and PASSWORD not in text


async def test_a_server_error_logs_its_traceback_without_the_callers_credentials(server, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    token = server.token("alice")

    async def exploding(*args, **kwargs):
        raise RuntimeError("the store exploded")

    monkeypatch.setattr(server.app.service, "list_notifications", exploding)
    headers = {"Authorization": f"Bearer {token}", "Cookie": f"access_token={token}"}
    status, response_headers, body, raw = await server.request("GET", "/api/v1/users/alice/notifications", headers=headers)
    assert_error((status, response_headers, body, raw), 500, "internal_error")
    assert any(record.exc_info for record in caplog.records), "the failure left no traceback to inspect"
    assert signature(token) not in logged(caplog)
    assert signature(token).encode() not in raw


async def test_monitoring_answers_show_no_credential_after_traffic(server):
    await server.app.service.create_user("carol", PASSWORD)
    status, _, login, _ = await server.request("POST", LOGIN, {"userId": "carol", "password": PASSWORD})
    assert status == 200
    status, _, ticket, _ = await server.request("POST", "/api/v1/auth/stream-ticket",
                                                headers={"Cookie": f"access_token={login['token']}", "Origin": server.origin})
    assert status == 200
    by_ticket = await server.live_stream("carol", query=urllib.parse.urlencode({"ticket": ticket["ticket"]}), auth=False)
    by_token = await server.live_stream("carol", query=urllib.parse.urlencode({"token": login["token"]}), auth=False)
    try:
        await server.notify("carol", "hello", as_user="carol")
        secrets = [signature(login["token"]), ticket["ticket"], PASSWORD, SECRET]
        for path, auth in (("/metrics", None), ("/api/v1/stats", None), ("/api/v1/stats?detail=users", "admin"),
                           ("/api/v1/stats?scope=cluster", None), ("/health", None), ("/health/sse", None)):
            status, _, _, raw = await server.request("GET", path, as_user="root" if auth else None, role=auth or "user")
            assert status == 200, (path, raw)
            text = raw.decode()
            for secret in secrets:
                assert secret not in text, path
    finally:
        by_ticket.close()
        by_token.close()
