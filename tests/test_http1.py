"""The HTTP/1.1 connection layer (core/transport/http1.py), and the two doors above it.

Requests are written by hand on raw sockets, so that what the server
receives is exactly what the test says: pipelining, HTTP/1.0, ``Expect:
100-continue``, a malformed request, an upgrade.  Both doors (the lane,
handlers/lane.py, and Tornado's RequestHandlers, handlers/tornado_door.py)
must give the same answers, header by header.
"""

from __future__ import annotations

import json

import pytest
from tornado.httputil import HTTPHeaders

import handlers.tornado_door
from tests.support.checks import assert_error_body, wait_until
from tests.support.rawhttp import NOTIFICATIONS, Raw, chunked, post_head

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_error_logged")]

BODY = json.dumps({"type": "info", "message": "hello"}).encode()


def get(path: str, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    """A GET request's bytes."""
    return f"GET {path} {version}\r\nHost: test\r\n{extra}\r\n".encode("latin-1")


async def read_until_closed(raw: Raw) -> bytes:
    """What the server sends until it closes (b"" if it closed at once)."""
    try:
        return await raw.closed_by_server()
    except ConnectionError:
        return b""


async def test_pipelined_requests_are_answered_in_order(server):
    raw = await Raw.open(server)
    await raw.send(get("/health") + post_head(server, len(BODY)) + BODY + get("/api/v1/stats"))
    first, second, third = [await raw.response() for _ in range(3)]
    assert first[0] == 200 and json.loads(first[2])["status"] == "ok"
    assert second[0] == 201 and json.loads(second[2])["message"] == "hello"
    assert third[0] == 200 and "activeUsers" in json.loads(third[2])
    await raw.close()


async def test_a_malformed_request_gets_a_json_400_and_the_connection_closes(server):
    raw = await Raw.open(server)
    await raw.send(b"GET /health HTTP/1.1\r\nBad Header Without Colon\r\n\r\n")
    status, headers, body = await raw.response()
    assert headers["Connection"] == "close"
    assert_error_body(status, body, 400, "bad_request")
    assert await read_until_closed(raw) == b""
    await raw.close()


@pytest.mark.parametrize("request_bytes", [b"HEAD /health HTTP/1.1\r\n\r\n",
                                           b"HEAD /health HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n"],
                         ids=["no Host", "a malformed header"])
async def test_a_refused_head_request_gets_the_400_without_a_body(server, request_bytes):
    raw = await Raw.open(server)
    await raw.send(request_bytes)
    head = await raw.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close\r\n" in head
    # No body (a client would take it for the next answer), and no length
    # (should HEAD be a guess, any client reads an empty body up to the close).
    assert b"Content-Length" not in head
    assert await read_until_closed(raw) == b""
    await raw.close()


async def test_garbage_after_a_good_request_is_refused_after_its_answer_then_closed(server):
    raw = await Raw.open(server)
    await raw.send(get("/health") + b"\x00\x01 not http\r\n\r\n")
    status, _, _ = await raw.response()
    assert status == 200
    status, headers, body = await raw.response()
    assert_error_body(status, body, 400, "bad_request")
    assert headers["Connection"] == "close"
    assert await read_until_closed(raw) == b""
    await raw.close()


async def test_http10_without_keep_alive_is_answered_then_closed(server):
    raw = await Raw.open(server)
    await raw.send(get("/health", "HTTP/1.0"))
    status, headers, _ = await raw.response()
    assert status == 200
    assert "Keep-Alive" not in headers.get("Connection", "")
    assert await read_until_closed(raw) == b""
    await raw.close()


async def test_http10_keep_alive_keeps_the_connection_for_the_next_request(server):
    raw = await Raw.open(server)
    await raw.send(get("/health", "HTTP/1.0", "Connection: keep-alive\r\n"))
    status, headers, _ = await raw.response()
    assert (status, headers["Connection"]) == (200, "Keep-Alive")
    await raw.send(get("/health"))
    assert (await raw.response())[0] == 200
    await raw.close()


async def test_connection_close_is_answered_then_closed(server):
    raw = await Raw.open(server)
    await raw.send(get("/health", extra="Connection: close\r\n"))
    status, headers, _ = await raw.response()
    assert (status, headers["Connection"]) == (200, "close")
    assert await read_until_closed(raw) == b""
    await raw.close()


async def test_a_close_option_anywhere_in_connection_is_answered_then_closed(server):
    # The close option in a list (RFC 9110, 7.6.1): the answer says the
    # connection ends, and it does (llhttp reads nothing after it anyway).
    raw = await Raw.open(server)
    await raw.send(get("/health", extra="Connection: keep-alive, close\r\n"))
    status, headers, _ = await raw.response()
    assert (status, headers["Connection"]) == (200, "close")
    assert await read_until_closed(raw) == b""
    await raw.close()


async def test_expect_100_continue_gets_continue_before_the_body_is_sent(server):
    raw = await Raw.open(server)
    await raw.send(post_head(server, len(BODY), "Expect: 100-continue\r\n"))
    interim = await raw.reader.readuntil(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100")
    await raw.send(BODY)
    status, _, body = await raw.response()
    assert status == 201 and json.loads(body)["message"] == "hello"
    await raw.close()


async def test_a_chunked_body_is_read_whole(server):
    raw = await Raw.open(server)
    await raw.send(post_head(server, None) + chunked(BODY[:10], BODY[10:]))
    status, _, body = await raw.response()
    assert status == 201 and json.loads(body)["message"] == "hello"
    await raw.close()


async def test_an_upgrade_request_is_answered_as_plain_http_then_closed(server):
    raw = await Raw.open(server)
    await raw.send(get("/health", extra="Connection: Upgrade\r\nUpgrade: h2c\r\n"))
    status, _, body = await raw.response()
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert await read_until_closed(raw) == b""
    await raw.close()


async def test_a_client_leaving_mid_body_is_not_counted_in_flight(server):
    raw = await Raw.open(server)
    await raw.send(post_head(server, len(BODY)) + BODY[:5])
    await wait_until(lambda: server.app.deps.http_counters.in_flight == 1)
    await raw.close()
    await wait_until(lambda: server.app.deps.http_counters.in_flight == 0)


# -- the two doors ------------------------------------------------------------------
#
# The API's own tests run through both doors (``BOTH_DOORS``); these check
# that the lane does serve the routes when it is on, and compare the two
# doors' answers header by header on the same requests.

#: What differs between two answers to the same request anyway.
IGNORED = {"Date", "Location", "Content-Length"}


async def test_with_the_lane_on_no_request_handler_serves_a_route(server, monkeypatch):
    async def refuse(self, *args):
        raise AssertionError("the lane should have served this")

    monkeypatch.setattr(handlers.tornado_door.RouteHandler, "_serve", refuse)
    created = await server.notify("alice", "through the lane")
    client = await server.live_stream("alice")
    listed = await server.request("GET", NOTIFICATIONS, as_user="alice")
    assert listed[2]["items"][0]["notificationId"] == created["notificationId"]
    client.close()


async def test_with_the_lane_off_the_request_handlers_serve_every_route(make_server, monkeypatch):
    served = []
    serve = handlers.tornado_door.RouteHandler._serve

    async def counting(self, method, pieces):
        served.append(method)
        await serve(self, method, pieces)

    monkeypatch.setattr(handlers.tornado_door.RouteHandler, "_serve", counting)
    server = await make_server(lanes=False)
    await server.notify("alice", "through Tornado")
    assert served == ["POST"]


async def both_doors(make_server):
    """A server with the lane on and one with it off."""
    return await make_server(), await make_server(lanes=False)


def same_headers(first: HTTPHeaders, second: HTTPHeaders) -> None:
    """The two answers carry the same headers, with the same values but for :data:`IGNORED`."""
    assert sorted(k for k in first if k not in IGNORED) == sorted(k for k in second if k not in IGNORED)
    for name in first:
        if name not in IGNORED:
            assert first[name] == second[name], name


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", NOTIFICATIONS, {"type": "info", "message": "same"}, 201),
        ("GET", NOTIFICATIONS, None, 200),
        ("GET", NOTIFICATIONS + "/unread-count", None, 200),
        ("POST", NOTIFICATIONS, {"type": "nope", "message": "x"}, 422),
        ("POST", NOTIFICATIONS, b'{"type":', 400),
        ("PUT", NOTIFICATIONS, None, 405),
        ("HEAD", "/health", None, 405),
        ("GET", "/api/v1/users/bob/notifications", None, 403),
        ("GET", "/no/such/path", None, 404),
        ("POST", "/api/v1/auth/logout", None, 204),
        ("GET", "/metrics", None, 200),
    ],
)
async def test_both_doors_answer_alike(make_server, method, path, body, status):
    answers = []
    for server in await both_doors(make_server):
        headers = {"Content-Type": "application/json"} if isinstance(body, bytes) else None
        answers.append(await server.request(method, path, body, headers=headers, as_user="alice"))
    (lane_status, lane_headers, lane_body, _), (tornado_status, tornado_headers, tornado_body, _) = answers
    assert lane_status == tornado_status == status
    same_headers(HTTPHeaders(lane_headers), HTTPHeaders(tornado_headers))
    if status >= 400:
        assert lane_body == tornado_body


async def test_both_doors_open_a_stream_alike(make_server):
    clients = [await server.stream("alice") for server in await both_doors(make_server)]
    lane, tornado = clients
    assert lane.status == tornado.status == 200
    same_headers(lane.headers, tornado.headers)
    first, second = await lane.next_event(), await tornado.next_event()
    assert first.type == second.type == "ready"
    assert set(json.loads(first.data)) == set(json.loads(second.data))
    for client in clients:
        client.close()


async def test_an_answer_before_the_body_is_in_says_connection_close(server):
    # An unknown path is refused before its body is read: the client is
    # told that this connection ends with the answer.
    raw = await Raw.open(server)
    await raw.send(post_head(server, 100, path="/api/v1/nowhere") + b"0123456789")
    status, headers, body = await raw.response()
    assert_error_body(status, body, 404, "not_found")
    assert headers["Connection"] == "close"
    await raw.send(b"x" * 90)  # the rest of the body is drained, then the connection ends
    assert await read_until_closed(raw) == b""
    await raw.close()
