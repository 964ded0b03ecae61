"""Input limits: oversized, malformed and hostile requests get plain answers.

Each case says what the client gets (README, "Limits"):

- a body over ``--max-body-kb``: JSON 413, at any size, announced by
  ``Content-Length`` (refused before the body is read), behind
  ``Expect: 100-continue``, or chunked (refused once it passes the limit);
- a request line plus headers over ``--max-header-kb``: JSON 431; past
  the header buffer (twice that, at least 64 KiB), the connection is closed
  without an answer;
- invalid UTF-8 or JSON: 400; a body that is not ``application/json``: 415;
  unknown body fields: ignored;
- a path out of ``static/``, however encoded: JSON 404.

Requests whose framing matters are written by hand on a raw socket
(:mod:`tests.support.rawhttp`), so that nothing is added or fixed behind
the test's back.
"""

from __future__ import annotations

import json

import pytest

from tests.support.checks import assert_error, assert_error_body, count_notifications, wait_until
from tests.support.rawhttp import NOTIFICATIONS, Raw, chunked, post_head

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

LIMIT = 256 * 1024


# -- bodies -----------------------------------------------------------------------


async def test_content_length_over_the_limit_is_refused_before_the_body_is_sent(server):
    raw = await Raw.open(server)
    await raw.send(post_head(server, LIMIT + 1))  # and not a byte of body
    status, headers, body = await raw.response()
    assert_error_body(status, body, 413, "payload_too_large")
    assert headers["Connection"] == "close"
    assert await raw.closed_by_server() == b""
    await raw.close()


@pytest.mark.parametrize("size", [LIMIT + 1, 4 * 1024 * 1024, 40 * 1024 * 1024], ids=["just over", "4 MiB", "40 MiB"])
async def test_body_over_the_limit_sent_whole_still_gets_json_413(server, size):
    # The client writes its whole body before reading: the server answers
    # at once and drains the rest, so the answer is not lost to a reset.
    raw = await Raw.open(server)
    await raw.send(post_head(server, size) + b" " * size)
    status, _, body = await raw.response()
    assert_error_body(status, body, 413, "payload_too_large")
    await raw.close()
    assert await count_notifications(server) == 0


async def test_expect_100_continue_over_the_limit_gets_413_instead_of_continue(server):
    raw = await Raw.open(server)
    await raw.send(post_head(server, 10 * 1024 * 1024 * 1024, extra="Expect: 100-continue\r\n"))
    status, _, body = await raw.response()
    assert_error_body(status, body, 413, "payload_too_large")
    await raw.close()


async def test_chunked_body_over_the_limit_is_413(server):
    raw = await Raw.open(server)
    await raw.send(post_head(server, None) + chunked(*[b" " * 65536] * 4, b" "))
    status, _, body = await raw.response()
    assert_error_body(status, body, 413, "payload_too_large")
    await raw.close()
    assert await count_notifications(server) == 0


async def test_chunked_body_within_the_limit_is_accepted(server):
    payload = json.dumps({"type": "info", "message": "in pieces"}).encode()
    raw = await Raw.open(server)
    await raw.send(post_head(server, None) + chunked(payload[:7], payload[7:20], payload[20:]))
    status, _, body = await raw.response()
    assert status == 201, body
    assert json.loads(body)["message"] == "in pieces"
    await raw.close()


@pytest.mark.parametrize("path", ["/api/v1/nothing-here", "/static/app.js", "/api/v1/events", "/api/v1/auth/login"])
async def test_body_over_the_limit_is_json_413_on_every_path(server, path):
    # Not Tornado's bare 400: every route counts the body itself.
    raw = await Raw.open(server)
    await raw.send(post_head(server, 2 * 1024 * 1024, path=path))
    status, headers, body = await raw.response()
    assert headers["Content-Type"].startswith("application/json")
    assert_error_body(status, body, 413, "payload_too_large")
    await raw.close()


async def test_refused_bodies_leave_no_request_counted_in_flight(server):
    for _ in range(3):
        raw = await Raw.open(server)
        await raw.send(post_head(server, LIMIT + 1))
        await raw.response()
        await raw.close()
    await wait_until(lambda: server.app.deps.http_counters.in_flight == 0)


async def test_malformed_content_length_gets_a_json_400_and_a_close(server):
    # Not a request the API can answer: the connection layer refuses the
    # message itself, with the contract's error body, and closes.
    raw = await Raw.open(server)
    await raw.send(post_head(server, None).replace(b"Transfer-Encoding: chunked", b"Content-Length: 12abc"))
    status, headers, body = await raw.response()
    assert_error_body(status, body, 400, "bad_request")
    assert headers["Connection"] == "close"
    assert await raw.closed_by_server() == b""
    await raw.close()
    await wait_until(lambda: server.app.deps.http_counters.in_flight == 0)


async def test_body_limit_applies_to_events_too(make_server):
    server = await make_server(max_body_kb=1)
    body = {"event": "x", "userIds": ["bob"], "data": {"pad": "p" * 1100}}
    assert_error(await server.request("POST", "/api/v1/events", body, as_user="svc", role="publisher"), 413, "payload_too_large")


# -- headers ------------------------------------------------------------------------


async def test_headers_over_max_header_kb_are_json_431(make_server):
    server = await make_server(max_header_kb=4)
    response = await server.request("GET", "/api/v1/stats", headers={"X-Padding": "p" * 4096})
    assert_error(response, 431, "headers_too_large")


async def test_headers_within_the_default_limit_are_accepted(server):
    # A fat cookie (SSO, analytics) is no reason to refuse a request.
    status, _, _, raw = await server.request("GET", "/api/v1/stats", headers={"Cookie": "big=" + "c" * 20_000})
    assert status == 200, raw


async def test_a_long_url_counts_towards_the_header_limit(make_server):
    server = await make_server(max_header_kb=4)
    assert_error(await server.request("GET", "/api/v1/stats?pad=" + "p" * 5000), 431, "headers_too_large")


async def test_headers_past_the_buffer_get_a_431_and_the_connection_closes(server):
    # A header block must be held whole before anyone can look at it; past
    # 64 KiB (or twice --max-header-kb) the server stops reading, answers
    # 431, and closes (after draining what the client still sends, so the
    # answer is not lost to a reset).
    raw = await Raw.open(server)
    head = f"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nX-Padding: {'p' * 100_000}\r\n\r\n".encode()
    await raw.send(head)
    status, headers, body = await raw.response()
    assert_error_body(status, body, 431, "headers_too_large")
    assert headers["Connection"] == "close"
    assert await raw.closed_by_server() == b""
    await raw.close()
    status, _, _, _ = await server.request("GET", "/api/v1/stats")
    assert status == 200


# -- what the body says -------------------------------------------------------------------


async def test_invalid_utf8_is_400_invalid_encoding(server):
    response = await server.request("POST", NOTIFICATIONS, b'{"type":"info","message":"\xff"}', headers={"Content-Type": "application/json"}, as_user="alice")
    assert_error(response, 400, "invalid_encoding")


async def test_invalid_json_is_400_invalid_json(server):
    response = await server.request("POST", NOTIFICATIONS, b'{"type":', headers={"Content-Type": "application/json"}, as_user="alice")
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("content_type", ["text/plain", "application/jsonx", "multipart/form-data; boundary=x"])
async def test_body_of_another_media_type_is_415(server, content_type):
    body = json.dumps({"type": "info", "message": "hi"})
    response = await server.request("POST", NOTIFICATIONS, body, headers={"Content-Type": content_type}, as_user="alice")
    assert_error(response, 415, "unsupported_media_type")


async def test_json_media_type_with_charset_and_odd_case_is_accepted(server):
    body = json.dumps({"type": "info", "message": "hi"})
    status, _, _, raw = await server.request("POST", NOTIFICATIONS, body, headers={"Content-Type": "Application/JSON; charset=UTF-8"}, as_user="alice")
    assert status == 201, raw


async def test_unknown_notification_fields_are_ignored(server):
    body = {"type": "info", "message": "hi", "priority": "urgent", "userId": "mallory", "readAt": "2020-01-01T00:00:00Z"}
    status, _, created, raw = await server.request("POST", NOTIFICATIONS, body, as_user="alice")
    assert status == 201, raw
    assert "priority" not in created
    assert created["userId"] == "alice" and created["readAt"] is None


async def test_unknown_event_fields_are_ignored(server):
    body = {"event": "build.finished", "userIds": ["bob"], "data": {}, "ttl": 5}
    status, _, answer, raw = await server.request("POST", "/api/v1/events", body, as_user="svc", role="publisher")
    assert (status, answer) == (202, {"published": 1}), raw


# -- static files -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/%2E%2E/server.py",
        "/static/..%2fserver.py",
        "/static/%2e%2e%2fserver.py",
        "/static/%252e%252e/server.py",
        "/static/%252e%252e%252fserver.py",
        "/static/..%5cserver.py",
        "/static/....//server.py",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/%00",
        "/static/app.js%00.txt",
        "/%2e%2e/server.py",
        "/static/",
    ],
)
async def test_paths_out_of_the_static_folder_are_a_json_404(server, path):
    response = await server.request("GET", path)
    assert_error(response, 404, "not_found")
    assert b"import" not in response[3] and b"root:" not in response[3]
