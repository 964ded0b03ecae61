"""The stream endpoint, as CONTRACT.md "The stream" describes it.

``GET /api/v1/users/{userId}/notifications/stream``: who may open it, its
response head and first bytes, the shape of notification events and their
cursors, fan-out to every device of a user, keep-alive, token expiry, that
user text cannot forge events, and that closed or non-reading clients are
let go.  Replay (``Last-Event-ID``) is covered in ``test_replay.py``.

Everything goes over real sockets to a real server; the only white-box
look is at the SSE manager's counters, to wait for the server to notice a
client that went away.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import urllib.parse
import weakref

import pytest

from tests.support.checks import assert_error_body, cursor_of, wait_until

#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

pytestmark = pytest.mark.timeout(30)

#: The keys of a notification on the wire (CONTRACT.md, "The stream").
NOTIFICATION_KEYS = {
    "notificationId", "userId", "type", "message", "createdAt",
    "actionUrl", "sourceType", "readAt", "data",
}

#: Text that would end the current event and start a forged one if a field
#: carried its line breaks raw.
FORGERY = "\r\n\r\nevent: evil\ndata: x\r"


def open_devices(server) -> int:
    """How many streams the server holds open (its own count)."""
    return server.manager.get_stats()["totalDevices"]


async def open_unread_stream(server, user_id: str) -> socket.socket:
    """Open ``user_id``'s stream on a raw socket that is never read.

    A small receive buffer (set before connecting, so the TCP window is
    small from the start) makes the server's side fill up quickly.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (server.host, server.port))
    path = f"/api/v1/users/{urllib.parse.quote(user_id, safe='')}/notifications/stream"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
        f"Accept: text/event-stream\r\nAuthorization: Bearer {server.token(user_id)}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode("ascii"))
    return sock


# -- who may open it ----------------------------------------------------------


async def test_stream_without_credential_is_401(server):
    client = await server.stream("alice", auth=False)
    assert_error_body(client.status, client.body_bytes, 401)


async def test_stream_with_invalid_token_is_401(server):
    client = await server.stream("alice", headers={"Authorization": "Bearer not-a-jwt"})
    assert_error_body(client.status, client.body_bytes, 401)


async def test_stream_of_another_user_is_403(server):
    client = await server.stream("alice", as_user="bob")
    assert_error_body(client.status, client.body_bytes, 403)


async def test_stream_over_device_limit_is_429(make_server):
    server = await make_server(max_devices_per_user=2)
    first = await server.live_stream("alice")
    second = await server.live_stream("alice")
    third = await server.stream("alice")
    assert_error_body(third.status, third.body_bytes, 429)
    first.close()
    second.close()


async def test_device_limit_is_per_user(make_server):
    server = await make_server(max_devices_per_user=2)
    alices = [await server.live_stream("alice") for _ in range(2)]
    bob = await server.live_stream("bob")
    assert bob.status == 200
    for client in (*alices, bob):
        client.close()


async def test_closing_a_stream_frees_its_device_slot(make_server):
    server = await make_server(max_devices_per_user=2)
    first = await server.live_stream("alice")
    second = await server.live_stream("alice")
    first.close()
    await wait_until(lambda: open_devices(server) == 1)
    third = await server.stream("alice")
    assert third.status == 200
    assert (await third.next_event()).type == "ready"
    second.close()
    third.close()


# -- response head and first bytes ----------------------------------------------


async def test_stream_response_headers(server):
    client = await server.live_stream("alice")
    assert client.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    directives = {part.strip().lower() for part in client.headers["Cache-Control"].split(",")}
    assert directives & {"no-cache", "no-store"}
    assert client.headers["X-Accel-Buffering"] == "no"
    client.close()


async def test_stream_starts_with_connected_comment_then_ready_event(server):
    client = await server.stream("alice")
    assert client.status == 200
    ready = await client.next_event()
    # Nothing but the comment came before the first event.
    assert client.comments == ["connected"]
    assert client.all_events == [ready]
    assert ready.type == "ready"
    payload = ready.json()
    assert set(payload) == {"connectionId", "userId", "instanceId"}
    assert payload["userId"] == "alice"
    assert isinstance(payload["connectionId"], str) and payload["connectionId"]
    assert payload["instanceId"] == server.manager.get_stats()["instanceId"]
    client.close()


async def test_each_stream_gets_its_own_connection_id(server):
    first = await server.stream("alice")
    second = await server.stream("alice")
    ids = {(await client.next_event()).json()["connectionId"] for client in (first, second)}
    assert len(ids) == 2
    first.close()
    second.close()


# -- notifications on the stream ------------------------------------------------


async def test_notification_is_an_unnamed_event_with_cursor_and_one_line_of_json(server):
    client = await server.live_stream("alice")
    created = await server.notify(
        "alice", "Report ready", type="success", actionUrl="/reports/7",
        sourceType="REPORT_JOB", data={"reportId": 7, "pages": [1, 2]},
    )
    event = await client.next_event()
    assert event.type == "message"
    cursor_of(event)
    assert "\n" not in event.data
    payload = event.json()
    assert set(payload) == NOTIFICATION_KEYS
    assert payload == created
    assert payload["type"] == "success"
    assert payload["message"] == "Report ready"
    assert payload["actionUrl"] == "/reports/7"
    assert payload["sourceType"] == "REPORT_JOB"
    assert payload["data"] == {"reportId": 7, "pages": [1, 2]}
    assert payload["readAt"] is None
    client.close()


async def test_every_device_of_a_user_gets_the_notification_with_the_same_id(server):
    devices = [await server.live_stream("alice") for _ in range(3)]
    created = await server.notify("alice", "to every tab")
    events = [await device.next_event() for device in devices]
    assert {event.id for event in events} == {events[0].id}
    assert all(event.json() == created for event in events)
    for device in devices:
        device.close()


async def test_notification_reaches_only_its_user(server):
    alice = await server.live_stream("alice")
    bob = await server.live_stream("bob")
    await server.notify("alice", "for alice")
    mine = await server.notify("bob", "for bob")
    # Bob's first event is his own: Alice's never reached him.
    assert (await bob.next_event()).json() == mine
    alice.close()
    bob.close()


async def test_cursors_only_increase(server):
    client = await server.live_stream("alice")
    created = [await server.notify("alice", f"n{i}") for i in range(8)]
    status, _, _, raw = await server.request(
        "PATCH", f"/api/v1/users/alice/notifications/{created[0]['notificationId']}", {"read": True}, as_user="alice"
    )
    assert status == 200, raw
    created.append(await server.notify("alice", "after the read"))
    events = await client.events(len(created) + 1)
    assert [event.type for event in events].count("notification-read") == 1
    cursors = [cursor_of(event) for event in events]
    assert cursors == sorted(set(cursors))
    assert [event.json() for event in events if event.type == "message"] == created
    client.close()


# -- keep-alive and expiry --------------------------------------------------------


async def test_keepalive_ping_comment_arrives(make_server):
    server = await make_server(keepalive_interval=0.2)
    client = await server.live_stream("alice")
    assert await client.next_comment() == "connected"
    assert await client.next_comment(timeout=3) == "ping"
    assert await client.next_comment(timeout=3) == "ping"
    client.close()


@pytest.mark.slow
async def test_expired_token_sends_token_expired_and_ends_the_stream_cleanly(server):
    token = server.token("alice", ttl=2)
    client = await server.live_stream("alice", headers={"Authorization": f"Bearer {token}"})
    event = await client.next_event(timeout=5)
    assert event.type == "token-expired"
    event.json()  # it has a data line, and it is JSON
    assert await client.wait_closed(timeout=5) is True
    assert client.ended_cleanly


# -- user text cannot forge events -------------------------------------------------


async def test_line_breaks_in_a_notification_cannot_forge_events(server):
    client = await server.live_stream("alice")
    data = {"note": FORGERY, "nested": {"list": [FORGERY, "\n\nid: 999\n\n", "nul\x00byte"]}}
    created = await server.notify("alice", "hi" + FORGERY + "\x00", data=data)
    sentinel = await server.notify("alice", "sentinel")
    first, second = await client.events(2)
    assert first.type == "message"
    payload = first.json()
    assert payload == created
    assert payload["message"] == "hi" + FORGERY + "\x00"
    assert payload["data"] == data
    # The next event is the sentinel: nothing was split off the first one.
    assert second.json() == sentinel
    assert second.type == "message"
    client.close()


async def test_line_breaks_in_a_published_event_cannot_forge_events(server):
    client = await server.live_stream("alice")
    data = {"text": FORGERY, "more": ["event: evil", "\rdata: y\n"]}
    status, _, body, raw = await server.request(
        "POST", "/api/v1/events", {"event": "order.shipped", "userIds": ["alice"], "data": data},
        as_user="svc", role="publisher",
    )
    assert status == 202, raw
    assert body == {"published": 1}
    sentinel = await server.notify("alice", "sentinel")
    first, second = await client.events(2)
    assert first.type == "order.shipped"
    assert first.json() == data
    assert second.json() == sentinel
    client.close()


@pytest.mark.parametrize("name", ["ok\nevent: evil", "ok\r", "ok\n", "ok\x00"])
async def test_event_name_with_line_break_is_refused(server, name):
    status, _, _, raw = await server.request(
        "POST", "/api/v1/events", {"event": name, "userIds": ["alice"], "data": {}},
        as_user="svc", role="publisher",
    )
    assert_error_body(status, raw, 422)


@pytest.mark.parametrize("url", ["/inbox\r\nevent: evil", "/inbox\n", "https://example.com/\rdata: x"])
async def test_action_url_with_line_break_is_refused(server, url):
    status, _, _, raw = await server.request(
        "POST", "/api/v1/users/alice/notifications", {"type": "info", "message": "m", "actionUrl": url},
        as_user="alice",
    )
    assert_error_body(status, raw, 422)


# -- letting clients go -----------------------------------------------------------------


async def test_closed_client_is_unsubscribed(server):
    client = await server.live_stream("alice")
    assert open_devices(server) == 1
    client.close()
    await wait_until(lambda: open_devices(server) == 0)
    status, _, stats, _ = await server.request("GET", "/api/v1/stats")
    assert status == 200
    assert stats["totalDevices"] == 0
    assert stats["activeUsers"] == 0


async def test_slow_reader_is_dropped_without_holding_back_the_others(make_server):
    server = await make_server(max_buffer_kb=16)
    reader = await server.live_stream("alice")
    slow = await open_unread_stream(server, "alice")
    try:
        await wait_until(lambda: open_devices(server) == 2)
        created = []
        blob = "x" * 8000  # data near the 8 KiB limit
        while server.manager.connections_dropped == 0:
            assert len(created) < 3000, "the non-reading stream was never dropped"
            created.append(await server.notify("alice", f"n{len(created)}", data={"blob": blob}))
        assert server.manager.connections_dropped == 1
        events = await reader.events(len(created), timeout=20)
        assert [event.json()["notificationId"] for event in events] == [n["notificationId"] for n in created]
        cursors = [cursor_of(event) for event in events]
        assert cursors == sorted(set(cursors))
        await wait_until(lambda: open_devices(server) == 1)
        status, _, stats, _ = await server.request("GET", "/api/v1/stats")
        assert status == 200
        assert stats["connectionsDropped"] == 1
    finally:
        slow.close()
        reader.close()


async def test_client_that_sends_bytes_on_its_stream_is_disconnected(server):
    client = await server.live_stream("alice")
    # Nothing is ever read from an event stream: a pipelined request would
    # sit unanswered forever, so the connection is closed instead.
    client._writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await client.wait_closed() is False
    await wait_until(lambda: open_devices(server) == 0)


async def test_stream_cut_by_a_reset_is_forgotten(server):
    client = await server.live_stream("alice")
    sock = client._writer.get_extra_info("socket")
    # SO_LINGER 0: close() sends RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    await wait_until(lambda: open_devices(server) == 0)
    created = await server.notify("alice", "nobody is listening")
    assert created["userId"] == "alice"


async def test_a_closed_stream_is_freed_although_frozen_out_of_the_collector(server):
    client = await server.live_stream("alice")
    (device,) = server.manager.devices_of("alice")
    writer = weakref.ref(device.writer)
    del device
    # The server freezes long-lived objects (server.tune_gc): from then on
    # only reference counting can free them, so no cycle may remain.
    gc.freeze()
    try:
        client.close()
        await wait_until(lambda: open_devices(server) == 0)
        await wait_until(lambda: writer() is None)
    finally:
        gc.unfreeze()
