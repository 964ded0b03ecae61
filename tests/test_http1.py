"""The HTTP/1.1 connection layer (core/transport/http1.py) and the publish fast lane.

Requests are written by hand on raw sockets, so that what the server
receives is exactly what the test says: pipelining, HTTP/1.0, ``Expect:
100-continue``, a malformed request, an upgrade.  The fast lane
(handlers/fastlane.py) must answer exactly as the handler it stands in for.
"""

from __future__ import annotations

import json

import pytest
from tornado.httputil import HTTPHeaders

import handlers.api
import handlers.stream
from tests.support.checks import assert_error, assert_error_body, wait_until
from tests.test_limits import NOTIFICATIONS, Raw, chunked, post_head

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


# -- the fast lane ----------------------------------------------------------------


async def test_the_usual_create_does_not_go_through_the_request_handler(server, monkeypatch):
    async def refuse(self, user_id):
        raise AssertionError("the fast lane should have served this")

    monkeypatch.setattr(handlers.api.NotificationsHandler, "post", refuse)
    created = await server.notify("alice", "through the lane")
    assert created["message"] == "through the lane"


async def test_the_fast_lane_answers_as_the_handler_does(server):
    # Authorization header: the fast lane.  Cookie (from the server's own
    # page): the handler.
    token = server.token("alice")
    lane = await server.request("POST", NOTIFICATIONS, {"type": "info", "message": "same"},
                                headers={"Authorization": f"Bearer {token}"})
    handler = await server.request("POST", NOTIFICATIONS, {"type": "info", "message": "same"},
                                   headers={"Cookie": f"access_token={token}", "Origin": server.origin})
    assert lane[0] == handler[0] == 201
    ignore = {"Date", "Location", "Content-Length"}
    assert sorted(k for k in HTTPHeaders(lane[1]).keys() if k not in ignore) == sorted(
        k for k in HTTPHeaders(handler[1]).keys() if k not in ignore)
    for name in ("Content-Type", "Cache-Control", "X-Content-Type-Options"):
        assert lane[1][name] == handler[1][name]
    assert lane[1]["Location"].rsplit("/", 1)[0] == handler[1]["Location"].rsplit("/", 1)[0]
    assert set(lane[2]) == set(handler[2])
    assert {k: v for k, v in lane[2].items() if k not in ("notificationId", "createdAt")} == {
        k: v for k, v in handler[2].items() if k not in ("notificationId", "createdAt")}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"type":', 400, "invalid_json"),
        (b'{"type":"info","message":"\xff"}', 400, "invalid_encoding"),
        (b'{"type":"nope","message":"x"}', 422, "validation_error"),
        (b"[1]", 422, None),
    ],
)
async def test_the_fast_lane_refuses_bad_bodies_as_the_handler_does(server, body, status, code):
    token = server.token("alice")
    answers = []
    for credential in ({"Authorization": f"Bearer {token}"}, {"Cookie": f"access_token={token}", "Origin": server.origin}):
        answers.append(await server.request("POST", NOTIFICATIONS, body,
                                            headers={"Content-Type": "application/json", **credential}))
    (lane_status, _, lane_body, _), (handler_status, _, handler_body, _) = answers
    assert lane_status == handler_status == status
    assert lane_body == handler_body
    if code is not None:
        assert lane_body["error"]["code"] == code


async def test_the_fast_lane_refuses_a_bad_token_with_401_and_the_scheme(server):
    response = await server.request("POST", NOTIFICATIONS, {"type": "info", "message": "x"},
                                    headers={"Authorization": "Bearer not-a-token"})
    assert_error(response, 401)
    assert response[1]["WWW-Authenticate"].startswith("Bearer")


async def test_the_fast_lane_refuses_another_users_notification_for_a_plain_user(server):
    response = await server.request("POST", "/api/v1/users/bob/notifications", {"type": "info", "message": "x"},
                                    as_user="alice")
    assert_error(response, 403, "forbidden")


# -- the stream lane --------------------------------------------------------------


@pytest.mark.parametrize("credential", ["header", "query"])
async def test_the_usual_stream_open_does_not_go_through_the_request_handler(server, monkeypatch, credential):
    async def refuse(self, user_id):
        raise AssertionError("the stream lane should have served this")

    monkeypatch.setattr(handlers.stream.StreamHandler, "get", refuse)
    if credential == "header":
        client = await server.live_stream("alice")
    else:
        client = await server.stream("alice", query=f"token={server.token('alice')}", auth=False)
        assert (await client.next_event()).type == "ready"
    created = await server.notify("alice", "to the lane's stream")
    event = await client.next_event()
    assert json.loads(event.data)["notificationId"] == created["notificationId"]
    client.close()


async def test_the_stream_lane_answers_as_the_handler_does(server):
    token = server.token("alice")
    lane = await server.stream("alice", headers={"Authorization": f"Bearer {token}"}, auth=False)
    handler = await server.stream("alice", headers={"Cookie": f"access_token={token}"}, auth=False)
    assert lane.status == handler.status == 200
    ignore = {"Date"}
    assert sorted(k for k in lane.headers.keys() if k not in ignore) == sorted(
        k for k in handler.headers.keys() if k not in ignore)
    for name in ("Content-Type", "Cache-Control", "X-Accel-Buffering", "X-Content-Type-Options", "Transfer-Encoding"):
        assert lane.headers[name] == handler.headers[name]
    first, second = await lane.next_event(), await handler.next_event()
    assert first.type == second.type == "ready"
    assert set(json.loads(first.data)) == set(json.loads(second.data))
    lane.close()
    handler.close()


async def test_the_stream_lane_replays_from_last_event_id_as_the_handler_does(server):
    client = await server.live_stream("alice")
    first = await server.notify("alice", "one")
    mark = (await client.next_event()).id
    client.close()
    second = await server.notify("alice", "two")
    token = server.token("alice")
    for headers, query in (({"Last-Event-ID": mark, "Authorization": f"Bearer {token}"}, ""),
                           ({"Cookie": f"access_token={token}"}, f"lastEventId={mark}")):
        resumed = await server.stream("alice", headers=headers, query=query, auth=False)
        assert (await resumed.next_event()).type == "ready"
        replayed = await resumed.next_event()
        assert json.loads(replayed.data)["notificationId"] == second["notificationId"] != first["notificationId"]
        resumed.close()


async def test_the_stream_lane_refuses_a_bad_query_token_with_a_json_401(server):
    client = await server.stream("alice", query="token=not-a-token", auth=False)
    assert client.status == 401
    assert json.loads(client.body_bytes)["error"]["code"] == "invalid_token"
    assert client.headers["WWW-Authenticate"].startswith("Bearer")
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
